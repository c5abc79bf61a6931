//! The scheduling policy of the SQLite store's own threads, the writer and the checkpointer:
//! `SCHED_BATCH`, so that their wakeups do not preempt the threads that serve requests (the
//! writer's module docs say why that is what lets its batches form).

/// Makes the calling thread `SCHED_BATCH`. Not being able to is no reason not to serve: the
/// batches are smaller, that is all.
#[cfg(target_os = "linux")]
pub(super) fn let_requests_run_first() {
    let normal = uapi::c::sched_param { sched_priority: 0 };
    if let Err(e) = uapi::sched_setscheduler(0, uapi::c::SCHED_BATCH, &normal) {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("a SQLite thread");
        tracing::warn!(error = %e, "{name} stays SCHED_OTHER");
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn let_requests_run_first() {}
