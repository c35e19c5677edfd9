package fs

import (
	"context"
	"sync"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
)

var _ = (fusefs.NodeOpener)((*Node)(nil))

// Open implements fusefs.NodeOpener.
func (n *Node) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	defer n.hold()()
	rel, o, e := n.object()
	if e != 0 {
		return nil, 0, e
	}
	if n.keep && flags&(syscall.O_ACCMODE|syscall.O_TRUNC) == syscall.O_RDONLY && !o.DataUpper() {
		// The data is in a lower: open it at first use.
		if h, err := n.opened(ctx, newHandle(n, -1, flags, o, rel), flags, false, false); err == nil {
			return h, n.openFlags(), 0
		}
	}
	fd, c, err := n.st.Open(o, rel, int(flags))
	if err != nil {
		return nil, 0, errno(err)
	}
	if flags&syscall.O_TRUNC != 0 {
		if err := n.killPriv(ctx, fd); err != nil {
			unix.Close(fd)
			return nil, 0, errno(err)
		}
	}
	if c != o {
		n.setObject(c)
	}
	h, err := n.opened(ctx, newHandle(n, fd, flags, c, rel), flags, c.DataUpper(), false)
	if err != nil {
		unix.Close(fd)
		return nil, 0, errno(err)
	}
	return h, n.openFlags(), 0
}

// openFlags are the FOPEN_ flags of a file handle: no FLUSH requests (a
// write has reached the upper before it returns, so close has nothing to
// report), and, with caching, the page cache kept across opens.
func (n *Node) openFlags() uint32 {
	flags := uint32(fuse.FOPEN_NOFLUSH)
	if n.keep {
		flags |= fuse.FOPEN_KEEP_CACHE
	}
	return flags
}

// handle is an open file. A handle follows its name's data: opened on a
// lower file, or on the data below a metadata-only copy, it moves on its
// next read to the copy the data was copied up to, so it sees what was
// written after the copy-up, also when a commit has frozen that copy into
// a lower since. A handle whose file a commit froze into a lower copies
// it up again on its next write, so the committed layer never changes.
// The attributes of a handle on the data below a metadata-only copy are
// the copy's.
//
// A read-only handle on a lower file opens it at its first use. A warm
// read is answered from the page cache and a stat from the name, so most
// such handles never need a descriptor: the open and close they save are
// two of the nine system calls the daemon makes for each file of a warm
// grep -r. Lowers are immutable while mounted, so the file opened later
// is the one the opener named. With caching off (timeout=0) they may
// change, and a handle opens at once.
type handle struct {
	n *Node
	// flags are the open flags, to open the file again after a copy-up.
	flags int

	// mu protects the fields below it.
	mu sync.Mutex
	// fd is -1 before the first use of a handle opened at first use,
	// and after Release.
	fd int
	// src, at srcRel, is the object whose data fd holds; nil after
	// Release.
	src    *cow.Object
	srcRel string
	// upper is set when fd is in the upper of commit generation gen.
	upper bool
	gen   uint64

	// pt is set for a passthrough handle, and other when it was opened
	// for writing by a user other than root (passthrough.go).
	pt, other bool
}

// newHandle returns a handle on fd, which holds the data of src at rel.
func newHandle(n *Node, fd int, flags uint32, src *cow.Object, rel string) *handle {
	reopen := int(flags) &^ (unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_TMPFILE | unix.O_DIRECT)
	return &handle{n: n, fd: fd, flags: reopen, src: src, srcRel: rel, upper: src.DataUpper(), gen: n.st.Generation()}
}

// inUpperNow reports whether fd is in the current upper.
func (h *handle) inUpperNow() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.inUpper()
}

// inUpper reports whether fd is in the current upper; h.mu is held.
func (h *handle) inUpper() bool { return h.upper && h.gen == h.n.st.Generation() }

// current returns the descriptor to read from.
func (h *handle) current() (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd < 0 {
		if h.src == nil {
			return -1, syscall.EBADF
		}
		fd, _, err := h.n.st.Open(h.src, h.srcRel, h.flags)
		if err != nil {
			return -1, err
		}
		h.fd = fd
	}
	if h.inUpper() || !h.n.movedFrom(h.src) {
		return h.fd, nil
	}
	rel, o, e := h.n.object()
	if e != 0 {
		return h.fd, nil
	}
	if o.SameData(rel, h.src, h.srcRel) {
		h.src, h.srcRel = o, rel
		return h.fd, nil
	}
	fd, _, err := h.n.st.Open(o, rel, h.flags)
	if err != nil {
		return h.fd, nil
	}
	h.swap(fd, o, rel)
	return fd, nil
}

// hasFd reports whether h has a descriptor.
func (h *handle) hasFd() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fd >= 0
}

// writable returns a descriptor in the current upper to write to, copying
// the file up again if a commit froze it into a lower since the handle
// was opened.
func (h *handle) writable() (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.inUpper() {
		return h.fd, nil
	}
	rel, o, e := h.n.object()
	if h.pt && (e == 0 && h.n.st.InUpper(o, rel, h.fd) || e == syscall.ENOENT && unlinked(h.fd)) {
		// The kernel writes on into this file: a commit kept it in the
		// upper, or it has no name in any layer.
		h.gen = h.n.st.Generation()
		return h.fd, nil
	}
	if e == syscall.ENOENT {
		// The file has no name in the merged view any more; writes go
		// to a private copy, as they would to an unlinked file.
		fd, err := h.n.st.Detach(h.fd)
		if err != nil {
			return -1, err
		}
		h.swap(fd, h.src, h.srcRel)
		h.upper = true // an unnamed file in the upper's filesystem
		return fd, nil
	}
	if e != 0 {
		return -1, e
	}
	c, err := h.n.st.CopyUp(o, rel, true)
	if err != nil {
		return -1, err
	}
	h.n.setObject(c)
	fd, _, err := h.n.st.Open(c, rel, h.flags)
	if err != nil {
		return -1, err
	}
	h.swap(fd, c, rel)
	return fd, nil
}

// swap makes fd, which holds the data of o at rel, the handle's
// descriptor; h.mu is held.
func (h *handle) swap(fd int, o *cow.Object, rel string) {
	unix.Close(h.fd)
	h.fd, h.src, h.srcRel = fd, o, rel
	h.upper, h.gen = o.DataUpper(), h.n.st.Generation()
}

var _ = (fusefs.FileReader)((*handle)(nil))

// Read implements fusefs.FileReader.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer h.n.hold()()
	fd, err := h.current()
	if err != nil {
		return nil, errno(err)
	}
	n, err := unix.Pread(fd, dest, off)
	if err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

var _ = (fusefs.FileWriter)((*handle)(nil))

// Write implements fusefs.FileWriter.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	defer h.n.hold()()
	fd, err := h.writable()
	if err != nil {
		return 0, errno(err)
	}
	if err := h.n.killPriv(ctx, fd); err != nil {
		return 0, errno(err)
	}
	n, err := unix.Pwrite(fd, data, off)
	if err != nil {
		return 0, errno(err)
	}
	return uint32(n), 0
}

var _ = (fusefs.FileReleaser)((*handle)(nil))

// Release implements fusefs.FileReleaser.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.n.closed(h)
	h.close()
	return 0
}

// close closes the handle's descriptor.
func (h *handle) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd >= 0 {
		unix.Close(h.fd)
		h.fd = -1
	}
	h.src = nil
}

var _ = (fusefs.FileFlusher)((*handle)(nil))

// Flush implements fusefs.FileFlusher. Every write already reached the
// upper; there is nothing to flush.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

var _ = (fusefs.FileFsyncer)((*handle)(nil))

// Fsync implements fusefs.FileFsyncer.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if h.n.st.Volatile() {
		return 0
	}
	defer h.n.hold()()
	fd, err := h.current()
	if err != nil {
		return errno(err)
	}
	if flags&1 != 0 { // FUSE_FSYNC_FDATASYNC
		return errno(unix.Fdatasync(fd))
	}
	return errno(unix.Fsync(fd))
}

var _ = (fusefs.FileGetattrer)((*handle)(nil))

// Getattr implements fusefs.FileGetattrer.
func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	defer h.n.hold()()
	return h.getattr(out)
}

func (h *handle) getattr(out *fuse.AttrOut) syscall.Errno {
	if !h.hasFd() && h.n.getattr(&out.Attr) == 0 {
		// Not opened yet: the attributes are the name's, unless it
		// is gone (then the file's, as for any open file).
		return 0
	}
	var st unix.Stat_t
	fd, err := h.current()
	if err != nil {
		return errno(err)
	}
	rel, o, e := h.n.object()
	if e == 0 && o.Metacopy() && !h.inUpperNow() {
		// fd is the data below; the attributes are the upper's.
		s, err := h.n.st.Stat(o, rel)
		if err != nil {
			return errno(err)
		}
		fillAttr(&out.Attr, &s)
		return 0
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return errno(err)
	}
	if o != nil {
		h.n.st.FixStat(o, &st)
	}
	fillAttr(&out.Attr, &st)
	return 0
}

var _ = (fusefs.FileAllocater)((*handle)(nil))

// Allocate implements fusefs.FileAllocater.
func (h *handle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	defer h.n.hold()()
	fd, err := h.writable()
	if err != nil {
		return errno(err)
	}
	return errno(unix.Fallocate(fd, mode, int64(off), int64(size)))
}

var _ = (fusefs.FileLseeker)((*handle)(nil))

// Lseek implements fusefs.FileLseeker.
func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	defer h.n.hold()()
	fd, err := h.current()
	if err != nil {
		return 0, errno(err)
	}
	n, err := unix.Seek(fd, int64(off), int(whence))
	if err != nil {
		return 0, errno(err)
	}
	return uint64(n), 0
}

var _ = (fusefs.NodeCopyFileRanger)((*Node)(nil))

// CopyFileRange implements fusefs.NodeCopyFileRanger.
func (n *Node) CopyFileRange(ctx context.Context, fhIn fusefs.FileHandle, offIn uint64, out *fusefs.Inode, fhOut fusefs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	in, doneIn, err := n.fileFor(fhIn, false)
	if err != nil {
		return 0, errno(err)
	}
	defer doneIn()
	o, doneOut, err := out.Operations().(*Node).fileFor(fhOut, true)
	if err != nil {
		return 0, errno(err)
	}
	defer doneOut()
	defer n.hold()()
	wfd, err := o.writable()
	if err != nil {
		return 0, errno(err)
	}
	rfd, err := in.current() // after a copy-up by writable, the copy
	if err != nil {
		return 0, errno(err)
	}
	roff, woff := int64(offIn), int64(offOut)
	c, err := unix.CopyFileRange(rfd, &roff, wfd, &woff, int(length), int(flags))
	if err != nil {
		return 0, errno(err)
	}
	return uint32(c), 0
}
