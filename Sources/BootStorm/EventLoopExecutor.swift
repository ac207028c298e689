import NIOCore

/// Runs a node's task on the event loop its sockets use. On the global pool every awaited packet
/// exchange resumed on another thread: a futex wake and a context switch per step, on the one CPU the
/// simulator is pinned to. Here a resumption is an entry in the loop's own task queue.
final class EventLoopExecutor: TaskExecutor, @unchecked Sendable {
    let loop: any EventLoop

    init(_ loop: any EventLoop) {
        self.loop = loop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: executor) }
    }
}
