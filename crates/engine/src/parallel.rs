//! Spreading independent pieces of work over the available cores (hashing and compressing
//! blocks).

use std::thread;

/// Run `work(input, output)` for every pair, spread over the available cores.
pub fn zip<I: Sync, O: Send>(inputs: &[I], outputs: &mut [O], work: impl Fn(&I, &mut O) + Sync) {
    if inputs.is_empty() {
        return;
    }
    let threads = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(inputs.len());
    let per_thread = inputs.len().div_ceil(threads);
    let work = &work;
    thread::scope(|scope| {
        for (ins, outs) in inputs
            .chunks(per_thread)
            .zip(outputs.chunks_mut(per_thread))
        {
            scope.spawn(move || {
                for (input, output) in ins.iter().zip(outs.iter_mut()) {
                    work(input, output);
                }
            });
        }
    });
}
