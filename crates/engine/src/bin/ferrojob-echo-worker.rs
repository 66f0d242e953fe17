//! A worker for the engine's own tests: it answers the protocol without Python.
//!
//! Payload commands: `echo:<text>` replies `<text>`; `fail:<text>` replies Failed; `sleep:<ms>`
//! sleeps then replies `slept`; `exit:<code>` exits; `abort` dies by SIGABRT; `tasks:<n>:<ms>`
//! starts n tasks of <ms> each, counting them on the status page; `stoppable:<n>:<ms>` the same,
//! but stops after the task during which the parent set the stop word, replying `ran <k>`.
//! Misbehaving peers, written
//! straight onto the socket: `twice:<text>` sends an extra reply for its job first,
//! `hugeframe` a header declaring 2^64 - 1 bytes, `garbage` 32 bytes of noise. `buffer:<text>`
//! returns <text> as an out-of-band result buffer; `args` returns its argument buffers' bytes
//! joined; `silent` never answers; `calls` replies `<n>:<payload>`, the number of call settings
//! received and the last one.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::Duration;

use ferrojob_engine::envelope::encode;
use ferrojob_engine::pool::WORKER_SOCKET_FD;
use ferrojob_engine::protocol::{encode_header, Kind};
use ferrojob_engine::shm::{Access, STATUS_STOP, STATUS_TASKS_STARTED};
use ferrojob_engine::worker::{Endpoint, Request};

fn main() {
    // SAFETY: this program is only ever started by the pool, which installs fds 3 and 4.
    let endpoint = unsafe { Endpoint::inherit() }.expect("not started by a ferrojob pool");
    let mut calls = (0u64, Vec::new());
    let result = endpoint.serve(|request, status| {
        if let Request::Call(payload) = request {
            calls = (calls.0 + 1, payload.to_vec());
            return;
        }
        let Request::Task {
            body,
            job,
            reply,
            buffers,
        } = request
        else {
            return;
        };
        let text = String::from_utf8_lossy(body).into_owned();
        let (command, argument) = text.split_once(':').unwrap_or((text.as_str(), ""));
        let sent = match command {
            "echo" => reply.done(argument.as_bytes(), &[]),
            "fail" => reply.failed(argument.as_bytes()),
            "sleep" => {
                std::thread::sleep(Duration::from_millis(argument.parse().unwrap()));
                reply.done(b"slept", &[])
            }
            "exit" => std::process::exit(argument.parse().unwrap()),
            "abort" => std::process::abort(),
            "tasks" => {
                let (n, ms) = argument.split_once(':').unwrap();
                for i in 1..=n.parse::<u64>().unwrap() {
                    status.store(STATUS_TASKS_STARTED, i);
                    std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                }
                reply.done(b"tasks done", &[])
            }
            "stoppable" => {
                let (n, ms) = argument.split_once(':').unwrap();
                let mut ran = 0;
                for i in 1..=n.parse::<u64>().unwrap() {
                    if i > 1 && status.load(STATUS_STOP) != 0 {
                        break;
                    }
                    status.store(STATUS_TASKS_STARTED, i);
                    std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                    ran = i;
                }
                reply.done(format!("ran {ran}").as_bytes(), &[])
            }
            "buffer" => reply.done(b"with a buffer", &[argument.as_bytes()]),
            "calls" => {
                let answer = [format!("{}:", calls.0).as_bytes(), &calls.1].concat();
                reply.done(&answer, &[])
            }
            "args" => {
                let joined: Vec<u8> = buffers.iter().flat_map(|b| b.to_vec()).collect();
                drop(buffers); // nothing maps the arguments any more: reported in this reply
                reply.done(&joined, &[])
            }
            "twice" => {
                let extra = encode(Access::CopyOnWrite, &[], &[], &[], argument.as_bytes());
                let header = encode_header(Kind::Done, 0, job, 0, extra.len() as u64);
                write_raw(&[&header[..], &extra].concat());
                reply.done(argument.as_bytes(), &[])
            }
            "hugeframe" => {
                write_raw(&encode_header(Kind::Done, 0, job, 0, u64::MAX));
                std::thread::sleep(Duration::from_secs(60));
                Ok(())
            }
            "garbage" => {
                write_raw(&[0xA5; 32]);
                std::thread::sleep(Duration::from_secs(60));
                Ok(())
            }
            "silent" => Ok(()), // never answers: the loop reports the job failed
            other => panic!("unknown test command {other}"),
        };
        sent.expect("reply sent");
    });
    result.expect("protocol error");
}

/// Write bytes onto the parent socket behind the endpoint's back.
fn write_raw(bytes: &[u8]) {
    // SAFETY: fd 3 is the worker's socket for the life of the process; ManuallyDrop keeps this
    // borrowed handle from closing it.
    let mut socket =
        std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(WORKER_SOCKET_FD) });
    socket.write_all(bytes).unwrap();
}
