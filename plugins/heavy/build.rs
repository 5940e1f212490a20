//! Generates `routines.rs`: `ROUTINES` distinct routines of `STEPS` integer steps each
//! (arithmetic, branches, short loops, table lookups) with constants drawn from a fixed
//! pseudo-random sequence, so every build writes the same file; and `ROUTINES`, every
//! routine by index. `handle` calls the one a task names, so all of them are reachable
//! and none is optimised away.
//!
//! The counts set the component's size, just over 10 MiB of code; see the profile in
//! `plugins/Cargo.toml` for what keeps its build short.

use std::fmt::Write as _;
use std::path::PathBuf;

/// How many routines.
const ROUTINES: usize = 1500;
/// Routines per module: rustc splits codegen units by module, so modules compile in
/// parallel.
const MODULE: usize = 100;
/// Steps per routine.
const STEPS: usize = 120;

/// splitmix64: a fixed, well-mixed sequence of constants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One step: `dst` updated from itself and `src`.
fn step(rng: &mut Rng, dst: &str, src: &str) -> String {
    let k = rng.below(63) + 1;
    match rng.below(8) {
        0 => format!(
            "{dst} = {dst}.wrapping_mul({}) ^ {src}.rotate_left({k});",
            rng.next() | 1
        ),
        1 => format!("{dst} = {dst}.wrapping_add({src} >> {k}) ^ {};", rng.next()),
        2 => format!(
            "{dst} ^= {src}.wrapping_sub({}).rotate_right({k});",
            rng.next()
        ),
        3 => format!(
            "if {src} & {} != 0 {{ {dst} = {dst}.wrapping_add({}); }} else {{ {dst} ^= {src}.rotate_left({k}); }}",
            1u64 << k,
            rng.next()
        ),
        4 => format!(
            "{dst} = {dst}.wrapping_add(TABLE[({src} >> {}) as usize & 255]);",
            rng.below(56)
        ),
        5 => format!(
            "for _ in 0..({src} & 3) {{ {dst} = {dst}.rotate_left({k}).wrapping_add({}); }}",
            rng.next()
        ),
        6 => format!(
            "{dst} = {dst}.wrapping_sub({src}.wrapping_mul({})) ^ ({src} >> {k});",
            rng.next() | 1
        ),
        _ => format!("{dst} = ({dst} ^ {}).wrapping_mul({src} | 1);", rng.next()),
    }
}

fn main() {
    let mut rng = Rng(0x6261_746f_6e);
    let vars = ["a", "b", "c", "d"];
    let mut code = String::new();
    for i in 0..ROUTINES {
        if i % MODULE == 0 {
            writeln!(code, "mod m{} {{\nuse super::TABLE;", i / MODULE).unwrap();
        }
        writeln!(code, "#[inline(never)]\npub fn r{i}(x: u64) -> u64 {{").unwrap();
        writeln!(
            code,
            "let (mut a, mut b, mut c, mut d) = (x ^ {}, x.rotate_left({}) ^ {}, !x, x.wrapping_mul({}));",
            rng.next(),
            rng.below(63) + 1,
            rng.next(),
            rng.next() | 1
        )
        .unwrap();
        for _ in 0..STEPS {
            let dst = vars[rng.below(4) as usize];
            let src = vars[rng.below(4) as usize];
            let line = step(&mut rng, dst, src);
            writeln!(code, "{line}").unwrap();
        }
        writeln!(code, "a ^ b ^ c ^ d\n}}").unwrap();
        if i % MODULE == MODULE - 1 || i == ROUTINES - 1 {
            writeln!(code, "}}").unwrap();
        }
    }
    write!(
        code,
        "/// Every routine, by index.\nstatic ROUTINES: [fn(u64) -> u64; {ROUTINES}] = ["
    )
    .unwrap();
    for i in 0..ROUTINES {
        write!(code, "m{}::r{i}, ", i / MODULE).unwrap();
    }
    writeln!(code, "];").unwrap();
    write!(
        code,
        "/// Constants the routines look up.\nstatic TABLE: [u64; 256] = ["
    )
    .unwrap();
    for _ in 0..256 {
        write!(code, "{}, ", rng.next()).unwrap();
    }
    writeln!(code, "];").unwrap();

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("routines.rs");
    std::fs::write(out, code).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}
