package fs

import (
	"context"
	"sync"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var _ = (fusefs.NodeOpener)((*Node)(nil))

// Open implements fusefs.NodeOpener.
func (n *Node) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	rel, o, e := n.object()
	if e != 0 {
		return nil, 0, e
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
	return newHandle(n, fd, c.Upper()), n.openFlags(), 0
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

// handle is an open file. A handle opened on a lower file moves to the
// upper copy on its next read once the file has been copied up, so it sees
// what was written after the copy-up.
type handle struct {
	n *Node

	// mu protects fd and upper.
	mu    sync.Mutex
	fd    int
	upper bool
}

func newHandle(n *Node, fd int, upper bool) *handle {
	return &handle{n: n, fd: fd, upper: upper}
}

// current returns the descriptor to use for reading.
func (h *handle) current() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.upper || !h.n.copiedUp() {
		return h.fd
	}
	rel, o, e := h.n.object()
	if e != 0 || !o.Upper() {
		return h.fd
	}
	fd, _, err := h.n.st.Open(o, rel, unix.O_RDONLY)
	if err != nil {
		return h.fd
	}
	unix.Close(h.fd)
	h.fd, h.upper = fd, true
	return fd
}

var _ = (fusefs.FileReader)((*handle)(nil))

// Read implements fusefs.FileReader.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := unix.Pread(h.current(), dest, off)
	if err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

var _ = (fusefs.FileWriter)((*handle)(nil))

// Write implements fusefs.FileWriter.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	fd := h.current()
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
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd >= 0 {
		unix.Close(h.fd)
		h.fd = -1
	}
	return 0
}

var _ = (fusefs.FileFlusher)((*handle)(nil))

// Flush implements fusefs.FileFlusher. Every write already reached the
// upper; there is nothing to flush.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

var _ = (fusefs.FileFsyncer)((*handle)(nil))

// Fsync implements fusefs.FileFsyncer.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	fd := h.current()
	if flags&1 != 0 { // FUSE_FSYNC_FDATASYNC
		return errno(unix.Fdatasync(fd))
	}
	return errno(unix.Fsync(fd))
}

var _ = (fusefs.FileGetattrer)((*handle)(nil))

// Getattr implements fusefs.FileGetattrer.
func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(h.current(), &st); err != nil {
		return errno(err)
	}
	_, o, _ := h.n.object()
	if o != nil {
		h.n.st.FixStat(o, &st)
	}
	fillAttr(&out.Attr, &st)
	return 0
}

var _ = (fusefs.FileAllocater)((*handle)(nil))

// Allocate implements fusefs.FileAllocater.
func (h *handle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return errno(unix.Fallocate(h.current(), mode, int64(off), int64(size)))
}

var _ = (fusefs.FileLseeker)((*handle)(nil))

// Lseek implements fusefs.FileLseeker.
func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(h.current(), int64(off), int(whence))
	if err != nil {
		return 0, errno(err)
	}
	return uint64(n), 0
}

var _ = (fusefs.NodeCopyFileRanger)((*Node)(nil))

// CopyFileRange implements fusefs.NodeCopyFileRanger.
func (n *Node) CopyFileRange(ctx context.Context, fhIn fusefs.FileHandle, offIn uint64, out *fusefs.Inode, fhOut fusefs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	in, ok1 := fhIn.(*handle)
	o, ok2 := fhOut.(*handle)
	if !ok1 || !ok2 {
		return 0, syscall.EBADF
	}
	roff, woff := int64(offIn), int64(offOut)
	c, err := unix.CopyFileRange(in.current(), &roff, o.current(), &woff, int(length), int(flags))
	if err != nil {
		return 0, errno(err)
	}
	return uint32(c), 0
}
