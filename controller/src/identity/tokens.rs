//! Who a ServiceAccount token belongs to: Kubernetes TokenReview with the
//! mesh's audience, or (with a directory source) a static token file.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use serde::Deserialize;

/// The audience a proxy's projected token must be for.
pub const AUDIENCE: &str = "identity.weft.dev";

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("cannot check tokens now: {0}")]
    Unavailable(String),
}

#[derive(Deserialize)]
struct StaticEntry {
    token: String,
    #[serde(flatten)]
    account: ServiceAccount,
}

pub enum Reviewer {
    Static(HashMap<String, ServiceAccount>),
    Kube(kube::Client),
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reviewer::Static(m) => write!(f, "Static({} tokens)", m.len()),
            Reviewer::Kube(_) => f.write_str("TokenReview"),
        }
    }
}

impl Reviewer {
    /// A `--static-tokens` file: a YAML list of `{token, namespace, serviceAccount}`.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let entries: Vec<StaticEntry> =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Reviewer::Static(
            entries.into_iter().map(|e| (e.token, e.account)).collect(),
        ))
    }

    pub async fn review(&self, token: &str) -> Result<ServiceAccount, TokenError> {
        match self {
            Reviewer::Static(tokens) => tokens
                .get(token)
                .cloned()
                .ok_or_else(|| TokenError::Rejected("unknown token".into())),
            Reviewer::Kube(client) => token_review(client, token).await,
        }
    }
}

async fn token_review(client: &kube::Client, token: &str) -> Result<ServiceAccount, TokenError> {
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![AUDIENCE.to_string()]),
        },
        ..TokenReview::default()
    };
    let result = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| TokenError::Unavailable(format!("TokenReview failed: {e}")))?;
    let status = result.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(TokenError::Rejected(
            status.error.unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
        return Err(TokenError::Rejected(format!(
            "not a token for the audience {AUDIENCE}"
        )));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    parse_service_account_user(&username)
        .ok_or_else(|| TokenError::Rejected(format!("'{username}' is not a ServiceAccount")))
}

/// `system:serviceaccount:<namespace>:<name>`
pub fn parse_service_account_user(username: &str) -> Option<ServiceAccount> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then(|| ServiceAccount {
        namespace: namespace.into(),
        service_account: name.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            parse_service_account_user("system:serviceaccount:shop:web"),
            Some(ServiceAccount {
                namespace: "shop".into(),
                service_account: "web".into()
            })
        );
        assert_eq!(parse_service_account_user("system:node:worker-1"), None);
        assert_eq!(
            parse_service_account_user("system:serviceaccount:shop:"),
            None
        );
    }

    #[tokio::test]
    async fn static_tokens() {
        let dir = std::env::temp_dir().join(format!("weft-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.yaml");
        std::fs::write(
            &path,
            "- {token: t1, namespace: shop, serviceAccount: web}\n",
        )
        .unwrap();
        let r = Reviewer::from_file(&path).unwrap();
        assert_eq!(r.review("t1").await.unwrap().service_account, "web");
        assert!(matches!(
            r.review("nope").await,
            Err(TokenError::Rejected(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
