fn main() {
    for (file, yaml) in weft_controller::crd::manifests() {
        println!("--- {file}\n{yaml}");
    }
}
