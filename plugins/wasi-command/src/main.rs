//! A plain WASI command, not an agent: it reads a host file and prints it. `baton check`
//! must refuse it, naming its `wasi:filesystem` imports.

fn main() {
    match std::fs::read_to_string("/etc/hostname") {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("cannot read: {e}"),
    }
}
