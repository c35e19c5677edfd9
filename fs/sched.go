package fs

import (
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

// The daemon and the Go scheduler.
//
// The transport (transport.go) serves each request on the goroutine that
// read it from /dev/fuse, which then reads the next one: a reader spends
// its life blocked in read(2), waking for a request, serving it, and
// blocking again. Two habits of the Go runtime make that dearer than it
// needs to be, and this file works around both.

// spareProcs gives the Go scheduler one P more than there are CPUs, for
// the reader blocked in read(2) on /dev/fuse.
//
// A goroutine blocked in a system call keeps its P. When every P is held
// so, the runtime's sysmon thread takes them back every 20 µs and the
// reader that wakes with the next request must queue for one. With a P
// to spare, the runtime leaves a blocked reader its P. Measured with perf
// stat over 5.8k requests of a warm ls -lR on two CPUs: daemon CPU 239
// against 184 ms, 11.3k against 8.1k context switches, 1717 against 171
// futex calls.
// GOMAXPROCS set in the environment is left as it is.
func spareProcs() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	}
}

// forcePreempt is how long the runtime lets a P run without passing
// through the scheduler before sysmon preempts it (forcePreemptNS in
// runtime/proc.go).
const forcePreempt = 10 * time.Millisecond

// yielder sends the goroutine serving a request through the scheduler
// (runtime.Gosched) once every so often.
//
// A reader whose read(2) returns while its P is still free takes the P
// back without passing through the scheduler, so the P's schedule count
// stands still while the reader serves request after request. After
// forcePreempt, sysmon takes the reader for a goroutine that hogs its P:
// it asks it to stop and, since it is usually blocked in read(2), takes
// the P away from it. Every such retake also resets sysmon's own backoff,
// so that it polls every 20 µs instead of every 10 ms. A yield now and
// then moves the count on and keeps sysmon asleep. Measured on two CPUs
// over 20k getxattr requests: sysmon's retakes 1517 against 69, daemon CPU
// 491 against 392 ms, 40.7 against 32.9 µs per request.
type yielder struct {
	every time.Duration // 0: never
	last  atomic.Int64  // when the last yield was, in ns since start
}

// newYielder paces the yields: the reader should pass through the
// scheduler well within forcePreempt. A yield costs two context switches
// (the runtime wakes an idle thread for the yielding goroutine's P, and the
// thread that yielded finds nothing to do and sleeps), so not much more
// often than that.
func newYielder() yielder {
	return yielder{every: forcePreempt / 2}
}

var start = time.Now()

// maybe yields if the last yield was longer ago than y.every.
func (y *yielder) maybe() {
	if y.every == 0 {
		return
	}
	now := int64(time.Since(start))
	last := y.last.Load()
	if now-last < int64(y.every) || !y.last.CompareAndSwap(last, now) {
		return
	}
	runtime.Gosched()
}
