//! The pool against real worker processes (the echo worker binary of this crate).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ferrojob_engine::pool::{
    CallLimits, Completion, Job, JobState, LossCause, Outcome, Pool, WorkerSpec,
};
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(20);

fn spec() -> WorkerSpec {
    WorkerSpec {
        program: env!("CARGO_BIN_EXE_ferrojob-echo-worker").into(),
        args: vec![],
        env: std::env::vars_os().collect(),
        init: b"hello".to_vec(),
    }
}

fn job(id: u64, command: &str) -> Job {
    Job::new(id, command.as_bytes())
}

fn next(pool: &Pool) -> Completion {
    pool.recv(WAIT)
        .expect("no completion within the test's patience")
}

fn payload(completion: &Completion) -> String {
    String::from_utf8(body(completion)).unwrap()
}

fn children_of_this_process() -> HashSet<i32> {
    let mut children = HashSet::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            children.extend(
                text.split_whitespace()
                    .map(|pid| pid.parse::<i32>().unwrap()),
            );
        }
    }
    children
}

#[test]
fn every_job_completes_once_with_its_own_reply() {
    let pool = Pool::new(spec(), 2, None).unwrap();
    for id in 0..50 {
        pool.submit(job(id, &format!("echo:{id}"))).unwrap();
    }
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let completion = next(&pool);
        assert_eq!(payload(&completion), completion.job.to_string());
        assert!(seen.insert(completion.job));
    }
    assert_eq!(pool.n_workers(), 2);
}

#[test]
fn a_failed_job_is_reported_and_the_worker_keeps_serving() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.submit(job(1, "fail:boom")).unwrap();
    pool.submit(job(2, "echo:after")).unwrap();
    let failed = next(&pool);
    assert!(matches!(&failed.outcome, Outcome::Failed { payload } if payload == b"boom"));
    assert_eq!(payload(&next(&pool)), "after");
}

#[test]
fn a_crashed_worker_loses_its_job_with_the_exit_code_and_is_replaced() {
    let pool = Pool::new(spec(), 2, None).unwrap();
    let before: HashSet<i32> = pool.pids().into_iter().collect();
    pool.submit(job(1, "exit:7")).unwrap();
    let lost = next(&pool);
    let Outcome::Lost(loss) = &lost.outcome else {
        panic!("expected a loss, got {lost:?}")
    };
    assert_eq!(loss.cause, LossCause::Exited(7));
    assert!(before.contains(&loss.pid));
    assert_eq!(pool.n_workers(), 1);
    pool.ensure_workers(2).unwrap();
    assert_eq!(pool.n_workers(), 2);
    pool.submit(job(2, "echo:alive")).unwrap();
    assert_eq!(payload(&next(&pool)), "alive");
}

#[test]
fn a_worker_killed_by_a_signal_reports_the_signal() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.submit(job(1, "abort")).unwrap();
    let lost = next(&pool);
    assert!(matches!(
        &lost.outcome,
        Outcome::Lost(loss) if loss.cause == LossCause::Signaled(libc::SIGABRT)
    ));
}

#[test]
fn a_task_over_the_time_limit_is_killed_and_named() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    // Three tasks: the first two are quick, the third outlasts the limit.
    pool.submit(job(1, "tasks:3:1")).unwrap();
    assert_eq!(payload(&next(&pool)), "tasks done");
    let limit = Duration::from_millis(200);
    pool.set_limits(CallLimits {
        task_timeout: Some(limit),
        ..CallLimits::default()
    });
    pool.submit(job(2, "tasks:1:60000")).unwrap();
    let completion = next(&pool);
    let Outcome::Lost(loss) = &completion.outcome else {
        panic!("expected a loss, got {completion:?}")
    };
    assert_eq!(loss.cause, LossCause::TimedOut(limit));
    assert_eq!(loss.tasks_started, 1);
}

#[test]
fn a_stuck_task_is_killed_while_nobody_waits_for_results() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.set_limits(CallLimits {
        task_timeout: Some(Duration::from_millis(200)),
        ..CallLimits::default()
    });
    pool.submit(job(1, "tasks:1:60000")).unwrap();
    let pid = Pid::from_raw(pool.pids()[0]);
    // Nobody calls recv: the supervisor alone stops the task (the reader reaps the worker).
    let deadline = Instant::now() + Duration::from_secs(30);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the stuck worker was never killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let completion = next(&pool);
    assert!(
        matches!(&completion.outcome, Outcome::Lost(loss) if matches!(loss.cause, LossCause::TimedOut(_)))
    );
}

#[test]
fn a_worker_past_its_memory_cap_stops_its_job_after_the_current_task() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.set_limits(CallLimits {
        max_rss: Some(1), // every worker is over it
        ..CallLimits::default()
    });
    pool.submit(job(1, "stoppable:1000:10")).unwrap();
    let first = next(&pool);
    let ran: u64 = payload(&first)
        .strip_prefix("ran ")
        .and_then(|n| n.parse().ok())
        .expect("a count of tasks run");
    assert!((1..1000).contains(&ran), "the job was not stopped: {ran}");
    // It is replaced: the next job runs on a fresh worker.
    pool.submit(job(2, "echo:x")).unwrap();
    assert_ne!(next(&pool).pid, first.pid);
}

#[test]
fn cancel_drops_the_queue_and_kills_busy_workers() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.submit(job(1, "sleep:60000")).unwrap();
    pool.submit(job(2, "echo:never")).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(pool.cancel(), vec![2]);
    let lost = next(&pool);
    assert_eq!(lost.job, 1);
    assert!(matches!(&lost.outcome, Outcome::Lost(loss) if loss.cause == LossCause::Cancelled));
}

#[test]
fn cancel_job_withdraws_one_job_and_leaves_the_others_alone() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.submit(job(1, "sleep:60000")).unwrap();
    pool.submit(job(2, "echo:queued")).unwrap();
    pool.submit(job(3, "echo:kept")).unwrap();
    // Queued: dropped, and completes as cancelled without touching a worker.
    assert_eq!(pool.cancel_job(2, true), JobState::Queued);
    let dropped = next(&pool);
    assert_eq!(dropped.job, 2);
    assert!(
        matches!(&dropped.outcome, Outcome::Lost(loss) if loss.cause == LossCause::Cancelled && loss.pid == 0)
    );
    // Running, not to be killed: left alone.
    assert_eq!(pool.cancel_job(1, false), JobState::Running);
    assert_eq!(pool.n_workers(), 1);
    // Running, killed: only its job is lost; the queue waits for the next worker.
    assert_eq!(pool.cancel_job(1, true), JobState::Running);
    let killed = next(&pool);
    assert_eq!(killed.job, 1);
    assert!(
        matches!(&killed.outcome, Outcome::Lost(loss) if loss.cause == LossCause::Cancelled && loss.pid > 0)
    );
    assert_eq!(pool.cancel_job(1, true), JobState::Unknown);
    pool.ensure_workers(1).unwrap();
    assert_eq!(payload(&next(&pool)), "kept");
    assert_eq!(pool.cancel_job(3, true), JobState::Unknown);
}

#[test]
fn wake_makes_a_blocked_recv_return_at_once() {
    let pool = std::sync::Arc::new(Pool::new(spec(), 1, None).unwrap());
    let waiter = {
        let pool = std::sync::Arc::clone(&pool);
        std::thread::spawn(move || pool.recv(Duration::from_secs(3600)).is_none())
    };
    std::thread::sleep(Duration::from_millis(50));
    pool.wake();
    assert!(
        waiter.join().unwrap(),
        "recv returned a completion instead of waking"
    );
    // Completions still arrive after a wake.
    pool.submit(job(1, "echo:after")).unwrap();
    assert_eq!(payload(&next(&pool)), "after");
}

#[test]
fn ensure_workers_shrinks_and_grows_the_pool() {
    let pool = Pool::new(spec(), 3, None).unwrap();
    pool.ensure_workers(1).unwrap();
    assert_eq!(pool.n_workers(), 1);
    pool.ensure_workers(2).unwrap();
    assert_eq!(pool.n_workers(), 2);
}

#[test]
fn idle_workers_retire_after_the_idle_timeout() {
    let pool = Pool::new(spec(), 2, Some(Duration::from_millis(100))).unwrap();
    pool.submit(job(1, "echo:x")).unwrap();
    next(&pool);
    let deadline = std::time::Instant::now() + WAIT;
    while pool.n_workers() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "workers never retired"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_reaps_every_child() {
    let pool = Pool::new(spec(), 3, None).unwrap();
    let pids: HashSet<i32> = pool.pids().into_iter().collect();
    pool.submit(job(1, "sleep:60000")).unwrap();
    pool.shutdown(Duration::from_millis(200));
    let remaining = children_of_this_process();
    assert!(pids.is_disjoint(&remaining), "left behind: {remaining:?}");
    assert!(pool.submit(job(2, "echo:x")).is_err());
}

fn lost_to_protocol(completion: &Completion) -> bool {
    matches!(
        &completion.outcome,
        Outcome::Lost(loss) if matches!(loss.cause, LossCause::Protocol(_))
    )
}

#[test]
fn a_second_reply_for_a_job_is_a_protocol_error_that_fails_the_next_job_not_a_hang() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.submit(job(0, "twice:first")).unwrap();
    pool.submit(job(1, "echo:second")).unwrap();
    let first = next(&pool);
    assert_eq!((first.job, payload(&first)), (0, "first".to_owned()));
    // The extra reply arrives while job 1 runs: the worker is replaced and job 1 reported lost.
    let second = next(&pool);
    assert_eq!(second.job, 1);
    assert!(lost_to_protocol(&second), "{second:?}");
    pool.ensure_workers(1).unwrap();
    pool.submit(job(2, "echo:after")).unwrap();
    assert_eq!(payload(&next(&pool)), "after");
}

#[test]
fn an_oversized_or_garbled_frame_fails_its_job_and_replaces_the_worker() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    for (id, command) in [(0, "hugeframe"), (1, "garbage")] {
        pool.ensure_workers(1).unwrap();
        pool.submit(job(id, command)).unwrap();
        let completion = next(&pool);
        assert_eq!(completion.job, id);
        assert!(lost_to_protocol(&completion), "{completion:?}");
    }
}

#[test]
fn a_forked_child_cannot_act_on_its_parents_pool() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    let pids = pool.pids();
    // SAFETY: the child only calls the pool (which refuses at once) and _exit; it takes no lock
    // that another thread of the parent could have held at the fork... except the pool's state
    // lock, which the refusal checks before taking.
    match unsafe { libc::fork() } {
        0 => {
            let refused = matches!(
                pool.submit(job(9, "echo:child")),
                Err(ferrojob_engine::pool::PoolError::Forked { .. })
            ) && pool.recv(Duration::ZERO).is_none();
            pool.releaser().release(pids[0], &[1, 2, 3]);
            pool.terminate();
            std::mem::forget(pool);
            // SAFETY: leaving the forked child at once, without running the parent's destructors.
            unsafe { libc::_exit(if refused { 0 } else { 1 }) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waiting for the child we just forked.
            assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
    }
    assert_eq!(
        pool.pids(),
        pids,
        "the child's terminate() must not kill our workers"
    );
    pool.submit(job(1, "echo:parent")).unwrap();
    assert_eq!(payload(&next(&pool)), "parent");
}

fn body(completion: &Completion) -> Vec<u8> {
    match &completion.outcome {
        Outcome::Done {
            payload,
            body_start,
            ..
        } => payload[*body_start..].to_vec(),
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn arguments_reach_the_worker_and_results_come_back_in_shared_memory() {
    use ferrojob_engine::arena::Arguments;
    use ferrojob_engine::shm::Access;

    let pool = Pool::new(spec(), 1, None).unwrap();
    let arguments = Arguments::new(256);
    let a = arguments.place(None, b"first ").unwrap();
    let b = arguments.place(Some((1, 2, 6)), b"second").unwrap();
    assert_eq!(arguments.place(Some((1, 2, 6)), b"second").unwrap(), b); // placed once
    let job = arguments
        .job(1, b"args", &[a, b, a], Access::ReadOnly)
        .unwrap();
    pool.submit(job).unwrap();
    assert_eq!(body(&next(&pool)), b"first secondfirst ");
    let job = arguments
        .job(2, b"buffer:out of band", &[], Access::ReadOnly)
        .unwrap();
    pool.submit(job).unwrap();
    match next(&pool).outcome {
        Outcome::Done { buffers, .. } => assert_eq!(buffers[0].to_vec(), b"out of band"),
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn a_chunk_is_rewritten_only_after_its_jobs_end_and_the_worker_unmaps_it() {
    use ferrojob_engine::arena::Arguments;
    use ferrojob_engine::shm::Access;

    let pool = Pool::new(spec(), 1, None).unwrap();
    let arguments = Arguments::new(128);
    let held = arguments.place(None, &[1u8; 100]).unwrap();
    // The job sleeps, holding its chunk; filling the arena meanwhile must not recycle it.
    let job = arguments
        .job(1, b"sleep:200", &[held], Access::ReadOnly)
        .unwrap();
    pool.submit(job).unwrap();
    let others: Vec<_> = (0..6)
        .map(|i| arguments.place(None, &[10 + i; 100]).unwrap())
        .collect();
    assert!(others.iter().all(|p| p.chunk != held.chunk));
    assert_eq!(body(&next(&pool)), b"slept");
    // Done, but the worker kept its mapping until the reply: it reports it in a later reply.
    let job = arguments.job(2, b"args", &[], Access::ReadOnly).unwrap();
    pool.submit(job).unwrap();
    next(&pool);
    let reused = (0..4)
        .map(|i| arguments.place(None, &[20 + i; 100]).unwrap())
        .any(|p| p.token != held.token && p.chunk != held.chunk);
    assert!(reused);
    // A placement in a retired chunk is refused, never misread.
    assert!(arguments
        .job(3, b"args", &[held], Access::ReadOnly)
        .is_err());
}

#[test]
fn a_job_releases_its_chunks_when_its_worker_dies_or_it_is_cancelled() {
    use ferrojob_engine::arena::Arguments;
    use ferrojob_engine::shm::Access;

    let pool = Pool::new(spec(), 1, None).unwrap();
    let arguments = Arguments::new(64);
    let first = arguments.place(None, &[1u8; 64]).unwrap();
    let queued = arguments.place(None, &[2u8; 64]).unwrap();
    pool.submit(
        arguments
            .job(1, b"exit:3", &[first], Access::ReadOnly)
            .unwrap(),
    )
    .unwrap();
    pool.submit(
        arguments
            .job(2, b"sleep:10000", &[queued], Access::ReadOnly)
            .unwrap(),
    )
    .unwrap();
    assert!(matches!(next(&pool).outcome, Outcome::Lost(_)));
    pool.ensure_workers(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    pool.cancel();
    while pool.recv(Duration::from_millis(100)).is_some() {}
    // Both jobs are gone: nothing holds their chunks; only mapped counts from workers that died
    // remain, and the arena closes those chunks with itself.
    drop(arguments);
}

#[test]
fn workers_are_replaced_after_their_task_budget_or_past_their_memory_cap() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.set_limits(CallLimits {
        max_tasks: Some(2),
        ..CallLimits::default()
    });
    let mut pids = Vec::new();
    for id in 0..6 {
        pool.submit(job(id, "echo:x")).unwrap();
        pids.push(next(&pool).pid);
    }
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2]);
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3);
    pool.set_limits(CallLimits {
        max_rss: Some(1), // every worker is over it: replaced after each job
        ..CallLimits::default()
    });
    let again: HashSet<i32> = (10..13)
        .map(|id| {
            pool.submit(job(id, "echo:y")).unwrap();
            next(&pool).pid
        })
        .collect();
    assert_eq!(again.len(), 3);
}

#[test]
fn each_worker_hears_a_calls_settings_once_before_its_jobs() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    pool.submit(job(1, "calls")).unwrap();
    assert_eq!(payload(&next(&pool)), "0:"); // no call set yet: nothing sent
    pool.set_call(b"first".to_vec());
    for id in 2..4 {
        pool.submit(job(id, "calls")).unwrap();
        assert_eq!(payload(&next(&pool)), "1:first"); // once, not with every job
    }
    pool.set_call(b"second".to_vec());
    pool.submit(job(4, "calls")).unwrap();
    assert_eq!(payload(&next(&pool)), "2:second");
    // A worker started later (here: a replacement) hears the current call before its first job.
    pool.submit(job(5, "exit:3")).unwrap();
    next(&pool);
    pool.ensure_workers(1).unwrap();
    pool.submit(job(6, "calls")).unwrap();
    assert_eq!(payload(&next(&pool)), "1:second");
}

#[test]
fn a_claimed_job_completes_to_its_claim_and_never_to_both_or_neither() {
    let pool = Pool::new(spec(), 1, None).unwrap();
    // Running: its completion comes to the claim, not the channel; one claim per job.
    pool.submit(job(1, "sleep:300")).unwrap();
    let claim = pool.claim(1).expect("a running job can be claimed");
    assert_eq!(claim.job(), 1);
    assert!(pool.claim(1).is_none(), "a second claim of one job");
    let completion = claim.wait(WAIT).expect("the claim's completion");
    assert_eq!(
        (completion.job, payload(&completion).as_str()),
        (1, "slept")
    );
    drop(claim);
    assert!(
        pool.recv(Duration::from_millis(300)).is_none(),
        "delivered twice"
    );
    // Read from the channel already: nothing left to claim.
    pool.submit(job(2, "echo:read")).unwrap();
    assert_eq!(next(&pool).job, 2);
    assert!(pool.claim(2).is_none());
    assert!(pool.claim(99).is_none(), "a job never submitted");
    // Queued behind a running job, then withdrawn unread: its completion goes to the channel.
    pool.submit(job(3, "sleep:300")).unwrap();
    pool.submit(job(4, "echo:queued")).unwrap();
    let claim = pool.claim(4).expect("a queued job can be claimed");
    assert!(claim.wait(Duration::ZERO).is_none());
    assert_eq!(next(&pool).job, 3);
    // Job 4 completes into its claim (or after it is withdrawn): the channel has it either way.
    std::thread::sleep(Duration::from_millis(100));
    drop(claim);
    let late = next(&pool);
    assert_eq!((late.job, payload(&late).as_str()), (4, "queued"));
    // A lost job's completion reaches its claim too.
    pool.submit(job(5, "exit:3")).unwrap();
    if let Some(claim) = pool.claim(5) {
        let lost = claim.wait(WAIT).expect("the lost job's completion");
        assert!(matches!(lost.outcome, Outcome::Lost(_)));
    } else {
        assert!(matches!(next(&pool).outcome, Outcome::Lost(_)));
    }
}
