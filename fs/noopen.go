package fs

import (
	"container/list"
	"context"
	"sync"
	"sync/atomic"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Files open without a round trip to the daemon.
//
// When the daemon answers OPEN with ENOSYS, the kernel stops sending OPEN
// and RELEASE for the rest of the mount, opens every file itself and keeps
// its page cache across opens (fs/fuse/file.c, fuse_file_open; the kernel
// must offer FUSE_NO_OPEN_SUPPORT, Linux 3.14). Such opens would send a
// FLUSH at every close, which ENOSYS stops as well. A program that opens,
// reads and closes file after file then costs the daemon only the reads
// the page cache cannot answer: on the bench's tree, a second grep -r of a
// read-only union sent 20 requests where it sent 46.4k (an OPEN and a
// RELEASE per file, and a GETATTR per file and directory, which a
// read-only mount spares too: the kernel then does not mark atimes stale
// after a read).
//
// The daemon does so with caches on only (with a timeout of 0 the lowers
// may change, and every open must see the file afresh), and only where
// the kernel checks permissions itself: on a read-only mount, which it
// keeps from being written, or with default_permissions. Creating a file
// still takes a request, CREATE, and its handle is an ordinary one.
//
// Requests on the files the kernel opened carry handle 0. A node serves
// them with its kernelFile: a handle opened read-only, on the file's
// first read (as file.go's handles on lower files are), and one opened for
// writing at the first write, truncate or fallocate, which is therefore
// where a lower file is copied up, not at an open for writing as in the
// kernel's overlayfs: opening a file for writing and closing it unwritten
// leaves the upper as it was. Descriptors are kept for at most
// maxKernelFiles nodes, the least recently used closed first (they open
// again when needed), and for every node that lost its last name while
// the kernel still knows it (pin): an unlinked file stays readable and
// writable through the descriptors opened before, as on any filesystem,
// and only the daemon's descriptor reaches its data then. A node's are
// closed when the kernel forgets it.
//
// Passthrough is then off (passthrough.go): the kernel refuses (EIO) an
// open it makes itself of a file that has a passthrough handle open
// (fs/fuse/iomode.c), so a file created through passthrough could not be
// opened again until closed. -o passthrough=on keeps OPEN for it.
type noOpen struct {
	fuse.RawFileSystem
	// on is set at INIT when the kernel can open files itself.
	on *atomic.Bool
}

func newNoOpen(raw fuse.RawFileSystem, on *atomic.Bool) *noOpen {
	return &noOpen{RawFileSystem: raw, on: on}
}

// init learns from the kernel's INIT request whether it can open files
// itself.
func (o *noOpen) init(kernel uint64) {
	o.on.Store(kernel&fuse.CAP_NO_OPEN_SUPPORT != 0)
}

// Open tells the kernel to open files itself.
func (o *noOpen) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if !o.on.Load() {
		return o.RawFileSystem.Open(cancel, in, out)
	}
	return fuse.ENOSYS
}

// Flush tells the kernel not to flush at close: every write reached the
// upper before it returned.
func (o *noOpen) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	if in.Fh != 0 {
		return o.RawFileSystem.Flush(cancel, in)
	}
	return fuse.ENOSYS
}

// maxKernelFiles bounds the nodes whose files the kernel opened that keep
// descriptors while they have a name.
const maxKernelFiles = 64

// kernelFiles is the registry of the nodes' kernelFiles.
type kernelFiles struct {
	mu  sync.Mutex
	lru list.List // of *kernelFile, most recently used first; not pinned ones
}

// kernelFile serves the requests on a node's files that the kernel opened
// itself.
type kernelFile struct {
	n *Node
	// users counts the requests using the file; elem is its place in
	// the registry's lru, nil once pinned. kernelFiles.mu guards both and
	// Node.kf.
	users int
	elem  *list.Element

	// mu guards r and w: the read-only handle, opened at the first read,
	// and the one for writing, opened at the first write. Reads use w once
	// it is there.
	mu   sync.Mutex
	r, w *handle
}

// kernelFile returns the node's kernelFile, in use until done is called.
func (n *Node) kernelFile() (kf *kernelFile, done func()) {
	reg := &n.reg.kfiles
	var evicted []*kernelFile
	reg.mu.Lock()
	kf = n.kf
	switch {
	case kf == nil:
		kf = &kernelFile{n: n}
		kf.elem = reg.lru.PushFront(kf)
		n.kf = kf
	case kf.elem != nil:
		reg.lru.MoveToFront(kf.elem)
	}
	kf.users++
	for e := reg.lru.Back(); e != nil && reg.lru.Len() > maxKernelFiles; {
		old := e.Value.(*kernelFile)
		e = e.Prev()
		if old.users == 0 {
			reg.lru.Remove(old.elem)
			old.elem = nil
			old.n.kf = nil
			evicted = append(evicted, old)
		}
	}
	reg.mu.Unlock()
	for _, old := range evicted {
		old.close()
	}
	return kf, func() {
		reg.mu.Lock()
		kf.users--
		reg.mu.Unlock()
	}
}

// close closes the kernelFile's descriptors; nobody uses it any more.
func (kf *kernelFile) close() {
	kf.mu.Lock()
	defer kf.mu.Unlock()
	for _, h := range []*handle{kf.r, kf.w} {
		if h != nil {
			h.close()
		}
	}
	kf.r, kf.w = nil, nil
}

// reading returns the handle to read from.
func (kf *kernelFile) reading() (*handle, error) {
	kf.mu.Lock()
	defer kf.mu.Unlock()
	if kf.w != nil {
		return kf.w, nil
	}
	if kf.r == nil {
		release := kf.n.hold()
		rel, o, e := kf.n.object()
		release()
		if e != 0 {
			return nil, e
		}
		// Opened at its first use, as a read-only handle on a lower
		// file is (file.go): a stat or a page-cache hit needs none.
		kf.r = newHandle(kf.n, -1, unix.O_RDONLY, o, rel)
	}
	return kf.r, nil
}

// writingHeld is writing under the stack's hold (handle methods take
// their own).
func (kf *kernelFile) writingHeld() (*handle, error) {
	defer kf.n.hold()()
	return kf.writing()
}

// writing returns the handle to write to, copying the file up when its
// data is in a lower.
func (kf *kernelFile) writing() (*handle, error) {
	kf.mu.Lock()
	defer kf.mu.Unlock()
	if kf.w != nil {
		return kf.w, nil
	}
	rel, o, e := kf.n.object()
	if e == syscall.ENOENT && kf.r != nil {
		// No name left: the pinned read-only descriptor is the data;
		// handle.writable gives the writes a private copy of it.
		kf.w = kf.r
		return kf.w, nil
	}
	if e != 0 {
		return nil, e
	}
	fd, c, err := kf.n.st.Open(o, rel, unix.O_RDWR)
	if err != nil {
		return nil, err
	}
	if c != o {
		kf.n.setObject(c)
	}
	kf.w = newHandle(kf.n, fd, unix.O_RDWR, c, rel)
	return kf.w, nil
}

// pin keeps the node's data reachable for as long as the kernel knows the
// node, which is about to lose its last name: called before an unlink, or
// a rename over it. Upper data is opened now, for writing, so that the
// file stays one file for every descriptor the kernel opened; data in a
// lower stays where it is.
func (n *Node) pin() {
	if !n.reg.noOpen.Load() || n.StableAttr().Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	kf, done := n.kernelFile()
	defer done()
	reg := &n.reg.kfiles
	reg.mu.Lock()
	if kf.elem != nil {
		reg.lru.Remove(kf.elem)
		kf.elem = nil
	}
	reg.mu.Unlock()
	kf.mu.Lock()
	defer kf.mu.Unlock()
	if kf.w != nil {
		return
	}
	rel, o, e := n.object()
	if e != 0 {
		return
	}
	if o.DataUpper() {
		if fd, _, err := n.st.Open(o, rel, unix.O_RDWR); err == nil {
			kf.w = newHandle(n, fd, unix.O_RDWR, o, rel)
			return
		}
	}
	if kf.r == nil {
		// The lowers do not change while mounted: the handle opens the
		// data where it is now, at its first use. A metadata-only copy
		// in the upper has its data there as well.
		kf.r = newHandle(n, -1, unix.O_RDONLY, o, rel)
	}
}

// pinned returns the handle of a node's kernelFile that holds its data,
// or nil.
func (n *Node) pinned() *handle {
	reg := &n.reg.kfiles
	reg.mu.Lock()
	kf := n.kf
	reg.mu.Unlock()
	if kf == nil {
		return nil
	}
	kf.mu.Lock()
	defer kf.mu.Unlock()
	if kf.w != nil {
		return kf.w
	}
	return kf.r
}

// unpin closes the node's kernelFile: the kernel forgot the node.
func (n *Node) unpin() {
	reg := &n.reg.kfiles
	reg.mu.Lock()
	kf := n.kf
	n.kf = nil
	if kf != nil && kf.elem != nil {
		reg.lru.Remove(kf.elem)
		kf.elem = nil
	}
	reg.mu.Unlock()
	if kf != nil {
		kf.close()
	}
}

// fileFor returns the handle serving a request on f, and what to call once
// the request is done: f's own handle, or for a file the kernel opened
// itself (f is nil), the node's kernelFile's handle for reading, or for
// writing when write is set.
func (n *Node) fileFor(f fusefs.FileHandle, write bool) (*handle, func(), error) {
	if h, ok := asHandle(f); ok {
		return h, func() {}, nil
	}
	if f != nil {
		return nil, nil, syscall.EBADF
	}
	kf, done := n.kernelFile()
	get := kf.reading
	if write {
		get = kf.writingHeld
	}
	h, err := get()
	if err != nil {
		done()
		return nil, nil, err
	}
	return h, done, nil
}

var _ = (fusefs.NodeReader)((*Node)(nil))

// Read implements fusefs.NodeReader.
func (n *Node) Read(ctx context.Context, f fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, done, err := n.fileFor(f, false)
	if err != nil {
		return nil, errno(err)
	}
	defer done()
	return h.Read(ctx, dest, off)
}

var _ = (fusefs.NodeWriter)((*Node)(nil))

// Write implements fusefs.NodeWriter.
func (n *Node) Write(ctx context.Context, f fusefs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	h, done, err := n.fileFor(f, true)
	if err != nil {
		return 0, errno(err)
	}
	defer done()
	return h.Write(ctx, data, off)
}

var _ = (fusefs.NodeFsyncer)((*Node)(nil))

// Fsync implements fusefs.NodeFsyncer.
func (n *Node) Fsync(ctx context.Context, f fusefs.FileHandle, flags uint32) syscall.Errno {
	h, done, err := n.fileFor(f, false)
	if err != nil {
		return errno(err)
	}
	defer done()
	return h.Fsync(ctx, flags)
}

var _ = (fusefs.NodeAllocater)((*Node)(nil))

// Allocate implements fusefs.NodeAllocater.
func (n *Node) Allocate(ctx context.Context, f fusefs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	h, done, err := n.fileFor(f, true)
	if err != nil {
		return errno(err)
	}
	defer done()
	return h.Allocate(ctx, off, size, mode)
}

var _ = (fusefs.NodeLseeker)((*Node)(nil))

// Lseek implements fusefs.NodeLseeker (SEEK_DATA and SEEK_HOLE).
func (n *Node) Lseek(ctx context.Context, f fusefs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	h, done, err := n.fileFor(f, false)
	if err != nil {
		return 0, errno(err)
	}
	defer done()
	return h.Lseek(ctx, off, whence)
}
