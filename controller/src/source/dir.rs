//! A directory of Kubernetes YAML as the source of objects, watched for
//! changes (create, edit, delete, atomic rename): on any change the whole
//! directory is read again and the difference sent. A file that does not
//! parse is reported and skipped; the objects it last held stay in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Event;
use super::parse::parse_documents;
use crate::index::{Kind, Object, ObjectRef};

/// Changes arriving within this window are read as one.
const SETTLE: Duration = Duration::from_millis(50);

/// The directory's state between scans.
#[derive(Debug, Default)]
pub struct DirSource {
    root: PathBuf,
    /// Each file's objects as of its last good parse.
    last_good: BTreeMap<PathBuf, Vec<Object>>,
    /// Errors reported for files, so each is reported once per change.
    failing: BTreeMap<PathBuf, String>,
    current: BTreeMap<ObjectRef, Object>,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ..Self::default()
        }
    }

    /// Reads the directory; returns what changed since the last scan.
    pub fn scan(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let files = match yaml_files(&self.root) {
            Ok(f) => f,
            Err(e) => {
                return vec![Event::Error {
                    source: "dir".into(),
                    message: format!("cannot read {}: {e}", self.root.display()),
                }];
            }
        };
        self.last_good.retain(|path, _| files.contains(path));
        self.failing.retain(|path, _| files.contains(path));
        for path in &files {
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_documents(&text).map_err(|e| e.to_string()));
            match parsed {
                Ok(objs) => {
                    self.failing.remove(path);
                    self.last_good.insert(path.clone(), objs);
                }
                Err(e) => {
                    if self.failing.get(path) != Some(&e) {
                        let kept = if self.last_good.contains_key(path) {
                            "its last good objects stay in force"
                        } else {
                            "it is skipped"
                        };
                        events.push(Event::Error {
                            source: "dir".into(),
                            message: format!("{}: {e}; {kept}", path.display()),
                        });
                        self.failing.insert(path.clone(), e);
                    }
                }
            }
        }
        let next: BTreeMap<ObjectRef, Object> = self
            .last_good
            .values()
            .flatten()
            .map(|o| (o.object_ref(), o.clone()))
            .collect();
        for (r, o) in &next {
            if self.current.get(r) != Some(o) {
                events.push(Event::Apply(o.clone()));
            }
        }
        for r in self.current.keys() {
            if !next.contains_key(r) {
                events.push(Event::Delete(r.clone()));
            }
        }
        self.current = next;
        events
    }

    /// The first scan, as a reset of every kind (then synced).
    pub fn initial(&mut self) -> Vec<Event> {
        let mut events: Vec<Event> = self
            .scan()
            .into_iter()
            .filter(|e| matches!(e, Event::Error { .. }))
            .collect();
        for kind in Kind::ALL {
            let objs = self
                .current
                .values()
                .filter(|o| o.kind() == kind)
                .cloned()
                .collect();
            events.push(Event::Reset(kind, objs));
            events.push(Event::Synced(kind));
        }
        events
    }
}

/// YAML and JSON files under `root`, skipping hidden ones (editor swap files).
fn yaml_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Watches `root` and sends its objects' changes until `events` closes.
pub async fn run(root: PathBuf, events: mpsc::Sender<Event>) -> Result<(), notify::Error> {
    let mut source = DirSource::new(&root);
    let (tx, mut changed) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    for e in source.initial() {
        if events.send(e).await.is_err() {
            return Ok(());
        }
    }
    while changed.recv().await.is_some() {
        tokio::time::sleep(SETTLE).await;
        while changed.try_recv().is_ok() {}
        for e in source.scan() {
            if events.send(e).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-dir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}\n";

    fn summary(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Apply(o) => format!("apply {}", o.object_ref()),
                Event::Delete(r) => format!("delete {r}"),
                Event::Reset(k, objs) => format!("reset {} {}", k.as_str(), objs.len()),
                Event::Synced(k) => format!("synced {}", k.as_str()),
                Event::Error { .. } => "error".into(),
            })
            .collect()
    }

    #[test]
    fn create_edit_delete_and_bad_files() {
        let dir = tmpdir("cycle");
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        let mut src = DirSource::new(&dir);
        let first = summary(&src.initial());
        assert!(first.contains(&"reset Service 1".to_string()));
        assert!(first.contains(&"synced AuthorizationPolicy".to_string()));

        // Nothing changed: nothing sent.
        assert!(src.scan().is_empty());
        // An edit is an apply.
        std::fs::write(dir.join("web.yaml"), SVC.replace("port: 80", "port: 81")).unwrap();
        assert_eq!(summary(&src.scan()), vec!["apply Service shop/web"]);
        // A malformed edit is reported once, and the last good version stays.
        std::fs::write(dir.join("web.yaml"), "kind: [broken").unwrap();
        let events = src.scan();
        assert_eq!(summary(&events), vec!["error"]);
        match &events[0] {
            Event::Error { message, .. } => assert!(
                message.contains("last good objects stay in force"),
                "{message}"
            ),
            _ => unreachable!(),
        }
        assert!(src.scan().is_empty(), "reported once");
        // An atomic rename replacing the file is read like an edit.
        std::fs::write(dir.join(".web.yaml.tmp"), SVC).unwrap();
        std::fs::rename(dir.join(".web.yaml.tmp"), dir.join("web.yaml")).unwrap();
        assert_eq!(summary(&src.scan()), vec!["apply Service shop/web"]);
        // Deleting the file deletes its objects.
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        assert_eq!(summary(&src.scan()), vec!["delete Service shop/web"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_watcher_sees_changes() {
        let dir = tmpdir("watch");
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(run(dir.clone(), tx));
        // Initial state: resets and syncs.
        let mut initial = 0;
        while initial < 2 * Kind::ALL.len() {
            rx.recv().await.unwrap();
            initial += 1;
        }
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary(&[ev]), vec!["apply Service shop/web"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
