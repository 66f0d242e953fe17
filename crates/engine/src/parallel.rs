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

/// Run `work` on every input, spread over the available cores, and hand each output to
/// `consume` on the calling thread, in input order, as soon as it and every one before it are
/// done: the caller writes out block `i` while later blocks are still being made. At most
/// `window` outputs are made ahead of `consume` (memory stays bounded). The first error of
/// `consume` stops the work and is returned; a panic in `work` is resumed on the calling thread.
pub fn ordered<I: Sync, O: Send, E>(
    inputs: &[I],
    window: usize,
    work: impl Fn(&I) -> O + Sync,
    mut consume: impl FnMut(usize, O) -> Result<(), E>,
) -> Result<(), E> {
    use std::collections::BTreeMap;
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::{Condvar, Mutex, PoisonError};

    struct State<O> {
        next: usize,
        consumed: usize,
        done: BTreeMap<usize, O>,
        stopped: bool,
        panic: Option<Box<dyn std::any::Any + Send>>,
    }
    let window = window.max(1);
    let state = Mutex::new(State {
        next: 0,
        consumed: 0,
        done: BTreeMap::new(),
        stopped: false,
        panic: None,
    });
    let changed = Condvar::new();
    let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
    let threads = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(inputs.len());
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = {
                    let mut state = lock();
                    while !state.stopped
                        && state.next < inputs.len()
                        && state.next >= state.consumed + window
                    {
                        state = changed.wait(state).unwrap_or_else(PoisonError::into_inner);
                    }
                    if state.stopped || state.next >= inputs.len() {
                        return;
                    }
                    state.next += 1;
                    state.next - 1
                };
                let made = panic::catch_unwind(AssertUnwindSafe(|| work(&inputs[index])));
                let mut state = lock();
                match made {
                    Ok(output) => {
                        state.done.insert(index, output);
                    }
                    Err(payload) => {
                        state.panic.get_or_insert(payload);
                        state.stopped = true;
                    }
                }
                changed.notify_all();
            });
        }
        let mut result = Ok(());
        for index in 0..inputs.len() {
            let output = {
                let mut state = lock();
                loop {
                    if let Some(output) = state.done.remove(&index) {
                        state.consumed = index + 1;
                        changed.notify_all();
                        break Some(output);
                    }
                    if state.stopped {
                        break None;
                    }
                    state = changed.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let Some(output) = output else { break };
            if let Err(error) = consume(index, output) {
                result = Err(error);
                break;
            }
        }
        let mut state = lock();
        state.stopped = true;
        changed.notify_all();
        if let Some(payload) = state.panic.take() {
            drop(state);
            panic::resume_unwind(payload);
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_hands_outputs_over_in_order_and_stops_on_error() {
        let inputs: Vec<u64> = (0..200).collect();
        let mut seen = Vec::new();
        let result: Result<(), ()> = ordered(
            &inputs,
            3,
            |x| x * x,
            |index, square| {
                assert_eq!(square, inputs[index] * inputs[index]);
                seen.push(index);
                Ok(())
            },
        );
        assert!(result.is_ok());
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        let mut consumed = 0;
        let stopped = ordered(
            &inputs,
            2,
            |x| *x,
            |index, _| {
                consumed += 1;
                if index == 10 {
                    Err(index)
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(stopped, Err(10));
        assert_eq!(consumed, 11);
        let empty: [u8; 0] = [];
        assert_eq!(
            ordered(&empty, 4, |_| (), |_, ()| Err::<(), ()>(())),
            Ok(())
        );
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller() {
        let inputs: Vec<u32> = (0..50).collect();
        let caught = std::panic::catch_unwind(|| {
            let _ = ordered(
                &inputs,
                4,
                |x| assert!(*x != 17, "boom"),
                |_, ()| Ok::<(), ()>(()),
            );
        });
        assert!(caught.is_err());
    }
}
