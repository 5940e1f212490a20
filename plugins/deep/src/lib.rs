//! Hostile test agent: attacks the stack limit. `handle` recurses without bound; each
//! frame keeps a `black_box`ed local array alive across the recursive call, so the
//! optimiser can neither drop the frames nor turn the recursion into a loop. Only the
//! host's stack limit can end the activation.

use baton_sdk::{Agent, Outcome, Task};

struct Deep;

impl Agent for Deep {
    fn handle(_task: Task) -> Result<Outcome, String> {
        let depth = dive(0);
        Ok(Outcome::new(format!("returned from depth {depth}")))
    }
}

#[inline(never)]
fn dive(depth: u64) -> u64 {
    // Never true; it only tells the compiler (and the lint) the recursion could end.
    if std::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    let frame = std::hint::black_box([depth; 8]);
    let deeper = dive(depth + 1);
    deeper.wrapping_add(frame.iter().sum::<u64>())
}

baton_sdk::export_agent!(Deep);
