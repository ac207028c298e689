#if canImport(Glibc)
import Glibc
#endif
import CLinux
import NIOCore
import NIOConcurrencyHelpers

/// One UDP socket served by a `DatagramReactor`: a TFTP transfer (server side, or a simulated client's).
///
/// Every method runs on the reactor's thread. The endpoint owns its socket until `reactor.remove(self)`
/// closes it.
public protocol DatagramEndpoint: AnyObject {
    /// The non-blocking socket to watch for readability.
    var descriptor: CInt { get }
    /// Registered: send the first packet, set the first deadline.
    func start(_ reactor: DatagramReactor, now: NIODeadline)
    /// The socket is readable: read (at least) one datagram into `scratch`, a buffer the reactor lends
    /// for the call (64 KiB, enough for any datagram).
    func readable(_ reactor: DatagramReactor, scratch: UnsafeMutableRawBufferPointer, now: NIODeadline)
    /// The deadline last given to `reactor.setDeadline` has passed.
    func deadlineReached(_ reactor: DatagramReactor, now: NIODeadline)
    /// The reactor is shutting down (or was, before the endpoint could start): end now. The socket is
    /// closed after this returns.
    func cancelled()
}

/// A thread of its own running an epoll loop over many UDP sockets, each handled by a
/// `DatagramEndpoint`, with one deadline per endpoint.
///
/// Why not NIO channels: a lock-step TFTP transfer is one datagram in and one out per block, thousands
/// of transfers at once in a boot storm. Through a `DatagramChannel` each datagram in became a
/// `SocketAddress` (its text form made by inet_ntop, a class instance), an `AddressedEnvelope` boxed in
/// `NIOAny`, a pipeline walk, and each one out a fresh buffer the block was copied into and an
/// envelope in a pending-writes queue; profiles of a storm put that above the kernel's own cost. Here
/// a datagram in is one `recvfrom` into a reused buffer, and one out is one `sendmsg` whose iovecs
/// point at the header and at the cached file bytes: no allocation, no copy.
///
/// Deadlines are lazy: an endpoint whose deadline moves later on every packet (a transfer's
/// retransmission time-out) costs a heap entry only when the deadline moves earlier than the one
/// armed; an entry that comes due early is re-armed for the real deadline.
public final class DatagramReactor: @unchecked Sendable {
    private let epoll: CInt
    private let wakeup: CInt
    private let lock = NIOLockedValueBox(Pending())
    private var thread: pthread_t?

    // Reactor thread only.
    private var endpoints: [CInt: Registration] = [:]
    private var timers = DeadlineHeap()
    private var nextSerial: UInt64 = 0
    private var running = true

    private struct Pending {
        var work: [() -> Void] = []
        var stopping = false
    }

    private struct Registration {
        var endpoint: any DatagramEndpoint
        var serial: UInt64
        /// The deadline the endpoint wants; the heap may hold an earlier entry for it.
        var deadline: NIODeadline?
        /// The earliest heap entry for this registration, if any.
        var armed: NIODeadline?
    }

    public enum ReactorError: Error, CustomStringConvertible {
        case system(String, CInt)
        public var description: String {
            switch self {
            case .system(let call, let code): "\(call): \(String(cString: strerror(code)))"
            }
        }
    }

    /// Starts the reactor's thread (named `name`, at most 15 bytes are kept).
    public init(name: String) throws {
        epoll = epoll_create1(CInt(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw ReactorError.system("epoll_create1", errno) }
        wakeup = eventfd(0, CInt(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wakeup >= 0 else {
            let code = errno
            close(epoll)
            throw ReactorError.system("eventfd", code)
        }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = wakeup
        _ = epoll_ctl(epoll, EPOLL_CTL_ADD, wakeup, &event)
        let box = Unmanaged.passRetained(ThreadStart(reactor: self, name: name))
        var handle = pthread_t()
        let created = pthread_create(&handle, nil, { argument in
            let start = Unmanaged<ThreadStart>.fromOpaque(argument!).takeRetainedValue()
            ib_set_thread_name(start.name)
            start.reactor.loop()
            return nil
        }, box.toOpaque())
        guard created == 0 else {
            box.release()
            close(wakeup)
            close(epoll)
            throw ReactorError.system("pthread_create", created)
        }
        thread = handle
    }

    private final class ThreadStart {
        let reactor: DatagramReactor
        let name: String
        init(reactor: DatagramReactor, name: String) {
            self.reactor = reactor
            self.name = name
        }
    }

    deinit {
        close(wakeup)
        close(epoll)
    }

    /// Runs `work` on the reactor's thread, soon. Thread-safe. Dropped once `shutdown()` has begun (the
    /// endpoints it would touch are cancelled by the shutdown).
    public func execute(_ work: @escaping () -> Void) {
        let wake = lock.withLockedValue { pending -> Bool in
            guard !pending.stopping else { return false }
            pending.work.append(work)
            return pending.work.count == 1
        }
        if wake {
            var one: UInt64 = 1
            _ = write(wakeup, &one, 8)
        }
    }

    /// Watches `endpoint`'s socket and starts it, on the reactor's thread. Thread-safe. Once the
    /// reactor is shutting down the endpoint is told `cancelled()` instead (on the caller's thread) and
    /// its socket closed.
    public func add(_ endpoint: any DatagramEndpoint) {
        let wake = lock.withLockedValue { pending -> Bool? in
            guard !pending.stopping else { return nil }
            pending.work.append { [self] in register(endpoint) }
            return pending.work.count == 1
        }
        guard let wake else {
            endpoint.cancelled()
            close(endpoint.descriptor)
            return
        }
        if wake {
            var one: UInt64 = 1
            _ = write(wakeup, &one, 8)
        }
    }

    /// Stops watching `endpoint` and closes its socket. Reactor thread only.
    public func remove(_ endpoint: any DatagramEndpoint) {
        let fd = endpoint.descriptor
        guard let registration = endpoints[fd], registration.endpoint === endpoint else { return }
        endpoints[fd] = nil
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
        close(fd)
    }

    /// When `endpoint.deadlineReached` is next due (nil: never). Reactor thread only.
    public func setDeadline(_ deadline: NIODeadline?, for endpoint: any DatagramEndpoint) {
        let fd = endpoint.descriptor
        guard var registration = endpoints[fd], registration.endpoint === endpoint else { return }
        registration.deadline = deadline
        if let deadline, registration.armed.map({ deadline < $0 }) ?? true {
            registration.armed = deadline
            timers.push(.init(deadline: deadline, descriptor: fd, serial: registration.serial))
        }
        endpoints[fd] = registration
    }

    /// Whether `endpoint` is still registered. Reactor thread only.
    public func isRegistered(_ endpoint: any DatagramEndpoint) -> Bool {
        endpoints[endpoint.descriptor]?.endpoint === endpoint
    }

    /// Ends the loop: every work item already queued runs first, then each endpoint still registered is
    /// told `cancelled()` and its socket closed; waits for the thread. Not from the reactor's thread.
    public func shutdown() {
        let first = lock.withLockedValue { pending -> Bool in
            defer { pending.stopping = true }
            return !pending.stopping
        }
        guard first, let thread else { return }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
        pthread_join(thread, nil)
        self.thread = nil
    }

    // MARK: The loop

    private func register(_ endpoint: any DatagramEndpoint) {
        let fd = endpoint.descriptor
        nextSerial += 1
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = fd
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0 else {
            close(fd)
            return
        }
        endpoints[fd] = Registration(endpoint: endpoint, serial: nextSerial)
        endpoint.start(self, now: .now())
    }

    private func loop() {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        defer { scratch.deallocate() }
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while running {
            var timeout: CInt = -1
            if let next = timers.peek {
                let now = NIODeadline.now()
                // Milliseconds, rounded up: waking a little late is harmless, early costs a spin.
                timeout = next.deadline <= now ? 0 : CInt(clamping: (next.deadline - now).nanoseconds / 1_000_000 + 1)
            }
            let count = epoll_wait(epoll, events, CInt(capacity), timeout)
            let now = NIODeadline.now()
            if count > 0 {
                for index in 0..<Int(count) {
                    let fd = events[index].data.fd
                    if fd == wakeup {
                        drainWork()
                    } else if let registration = endpoints[fd] {
                        registration.endpoint.readable(self, scratch: scratch, now: now)
                    }
                }
            }
            fireTimers(now: .now())
        }
        // Shutting down: whatever is still registered ends now.
        for registration in Array(endpoints.values) {
            registration.endpoint.cancelled()
            remove(registration.endpoint)
        }
    }

    private func drainWork() {
        var value: UInt64 = 0
        _ = read(wakeup, &value, 8)
        let (work, stopping) = lock.withLockedValue { pending -> ([() -> Void], Bool) in
            defer { pending.work.removeAll(keepingCapacity: true) }
            return (pending.work, pending.stopping)
        }
        for item in work { item() }
        if stopping { running = false }
    }

    private func fireTimers(now: NIODeadline) {
        while let next = timers.peek, next.deadline <= now {
            timers.pop()
            guard var registration = endpoints[next.descriptor], registration.serial == next.serial else { continue }
            // Entries older than the armed one are stale; the armed one is consumed here.
            guard registration.armed == next.deadline else { continue }
            registration.armed = nil
            guard let deadline = registration.deadline else {
                endpoints[next.descriptor] = registration
                continue
            }
            if deadline > now {
                registration.armed = deadline
                endpoints[next.descriptor] = registration
                timers.push(.init(deadline: deadline, descriptor: next.descriptor, serial: next.serial))
                continue
            }
            registration.deadline = nil
            endpoints[next.descriptor] = registration
            registration.endpoint.deadlineReached(self, now: now)
        }
    }
}

/// A binary min-heap of deadlines.
struct DeadlineHeap {
    struct Entry {
        var deadline: NIODeadline
        var descriptor: CInt
        var serial: UInt64
    }

    private var entries: [Entry] = []

    var peek: Entry? { entries.first }

    mutating func push(_ entry: Entry) {
        entries.append(entry)
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].deadline < entries[parent].deadline else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() {
        guard !entries.isEmpty else { return }
        entries.swapAt(0, entries.count - 1)
        entries.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < entries.count, entries[left].deadline < entries[smallest].deadline { smallest = left }
            if right < entries.count, entries[right].deadline < entries[smallest].deadline { smallest = right }
            guard smallest != parent else { return }
            entries.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
