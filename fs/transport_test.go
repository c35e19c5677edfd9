package fs

import (
	"bytes"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The transport is tested over a socket pair in place of /dev/fuse: the
// test is the kernel, writing requests and reading replies, one message
// each, as /dev/fuse has them.

// stallFS answers GETATTR, except that of node 2, which waits for stall.
type stallFS struct {
	fuse.RawFileSystem
	entered chan struct{}
	stall   chan struct{}
}

func (f *stallFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.NodeId == 2 {
		f.entered <- struct{}{}
		<-f.stall
	}
	out.Ino = in.NodeId
	return fuse.OK
}

const opGetattr = 3 // FUSE_GETATTR

type kernelEnd struct {
	t    *testing.T
	fd   int
	once sync.Once
}

// hangUp ends the connection, as an unmount would.
func (k *kernelEnd) hangUp() { k.once.Do(func() { unix.Close(k.fd) }) }

func (k *kernelEnd) send(b []byte) {
	k.t.Helper()
	if _, err := unix.Write(k.fd, b); err != nil {
		k.t.Fatalf("send request: %v", err)
	}
}

func (k *kernelEnd) getattr(unique, node uint64) {
	in := fuse.GetAttrIn{InHeader: fuse.InHeader{Opcode: opGetattr, Unique: unique, NodeId: node}}
	in.Length = uint32(unsafe.Sizeof(in))
	k.send(unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in)))
}

// recv returns the next message the transport wrote: its header and body.
func (k *kernelEnd) recv() (fuse.OutHeader, []byte) {
	k.t.Helper()
	buf := make([]byte, 1<<16)
	n, err := unix.Read(k.fd, buf)
	if err != nil {
		k.t.Fatalf("no message from the transport: %v", err)
	}
	var oh fuse.OutHeader
	if n < int(unsafe.Sizeof(oh)) {
		k.t.Fatalf("message of %d bytes", n)
	}
	oh = *(*fuse.OutHeader)(unsafe.Pointer(&buf[0]))
	if int(oh.Length) != n {
		k.t.Fatalf("header says %d bytes, message has %d", oh.Length, n)
	}
	return oh, buf[unsafe.Sizeof(oh):n]
}

func startTransport(t *testing.T, fs fuse.RawFileSystem) (*transport, *kernelEnd) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A reply that does not come within this fails the test instead of
	// hanging it.
	tv := unix.Timeval{Sec: 10}
	if err := unix.SetsockoptTimeval(pair[1], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	tr := newTransport(64 << 10)
	var kernel uint64
	tr.onInit = func(k uint64) { kernel = k }
	tr.serve(pair[0], fuse.NewProtocolServer(fs, &fuse.MountOptions{MaxWrite: 64 << 10}))
	k := &kernelEnd{t: t, fd: pair[1]}
	t.Cleanup(func() {
		k.hangUp()
		tr.wait()
	})

	in := fuse.InitIn{Major: 7, Minor: 31, MaxReadAhead: 1 << 17, Flags: uint32(fuse.CAP_NO_OPENDIR_SUPPORT)}
	in.Opcode, in.Unique, in.Length = opInit, 1, uint32(unsafe.Sizeof(in))
	k.send(unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in)))
	if oh, _ := k.recv(); oh.Unique != 1 || oh.Status != 0 {
		t.Fatalf("INIT answered with %+v", oh)
	}
	<-tr.inited
	if kernel&fuse.CAP_NO_OPENDIR_SUPPORT == 0 {
		t.Errorf("onInit got kernel flags %#x, without those of the INIT request", kernel)
	}
	return tr, k
}

func TestTransportServesWhileARequestStalls(t *testing.T) {
	fs := &stallFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), entered: make(chan struct{}), stall: make(chan struct{})}
	tr, k := startTransport(t, fs)
	var unstall sync.Once
	release := func() { unstall.Do(func() { close(fs.stall) }) }
	t.Cleanup(release) // before the transport's cleanup waits for its readers

	// In sequence, one reader serves everything.
	for u := uint64(10); u < 20; u++ {
		k.getattr(u, 3)
		if oh, _ := k.recv(); oh.Unique != u || oh.Status != 0 {
			t.Fatalf("GETATTR %d answered with %+v", u, oh)
		}
	}
	tr.mu.Lock()
	helpers := tr.helpers
	tr.mu.Unlock()
	if helpers != 0 {
		t.Errorf("%d helpers started for requests served in sequence", helpers)
	}

	// The only reader stalls in a request: another must take over.
	k.getattr(20, 2)
	<-fs.entered
	k.getattr(21, 3)
	if oh, _ := k.recv(); oh.Unique != 21 {
		t.Fatalf("while request 20 stalls, got the reply to %d, want 21", oh.Unique)
	}
	release()
	if oh, _ := k.recv(); oh.Unique != 20 || oh.Status != 0 {
		t.Fatalf("the stalled request was answered with %+v", oh)
	}

	// Back to one reader, the helper gone.
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.mu.Lock()
		reading, serving, helpers := tr.reading, tr.serving, tr.helpers
		tr.mu.Unlock()
		if reading == 1 && serving == 0 {
			if helpers == 0 {
				t.Fatal("no helper was started, yet the stalled request did not block the next")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d readers and %d requests in service long after the stall ended, want 1 and 0", reading, serving)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestTransportNotifications(t *testing.T) {
	tr, k := startTransport(t, fuse.NewDefaultRawFileSystem())
	le := func(vs ...uint64) []byte { // little-endian fields of 8 or 4 bytes
		var b []byte
		for i := 0; i < len(vs); i += 2 {
			for j := uint64(0); j < vs[i+1]; j++ {
				b = append(b, byte(vs[i]>>(8*j)))
			}
		}
		return b
	}
	for _, c := range []struct {
		name string
		send func() fuse.Status
		code int32
		body []byte
	}{
		{"inval inode", func() fuse.Status { return tr.InodeNotify(7, 4096, -1) }, 2,
			le(7, 8, 4096, 8, ^uint64(0), 8)},
		{"inval entry", func() fuse.Status { return tr.EntryNotify(5, "name") }, 3,
			append(le(5, 8, 4, 4, 0, 4), "name\x00"...)},
		{"delete", func() fuse.Status { return tr.DeleteNotify(5, 9, "x") }, 6,
			append(le(5, 8, 9, 8, 1, 4, 0, 4), "x\x00"...)},
	} {
		if st := c.send(); st != fuse.OK {
			t.Errorf("%s: %v", c.name, st)
			continue
		}
		oh, body := k.recv()
		if oh.Unique != 0 || oh.Status != c.code || !bytes.Equal(body, c.body) {
			t.Errorf("%s: wrote %+v %x, want code %d and %x", c.name, oh, body, c.code, c.body)
		}
	}

	// Once the connection ended, nothing more goes to the descriptor.
	k.hangUp()
	tr.wait()
	if st := tr.EntryNotify(5, "late"); st != fuse.Status(unix.EBADF) {
		t.Errorf("notification after the end: %v, want EBADF", st)
	}
}
