package fs

import (
	"context"
	"errors"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A handle on a file whose data is in the upper can be a passthrough
// handle: the kernel then reads and writes the upper file itself, and
// READ and WRITE requests never reach the daemon (FUSE passthrough,
// Linux 6.9, root only). The kernel binds one backing file to an inode
// while any passthrough handle of it is open, and every open of such an
// inode must be a passthrough one (Documentation/filesystems/fuse-io.rst;
// fs/fuse/iomode.c answers EIO otherwise). So a node decides at each open,
// from the handles it has open:
//
//   - none: passthrough when the object is a regular file whose data is in
//     the upper with one link, and the opener is root or opens read-only;
//     else a handle through the daemon;
//   - handles through the daemon: another one;
//   - passthrough handles: another one, whatever the file and the opener.
//
// A lower file is never a backing file: its handles go through the daemon,
// so that they follow a copy-up (TestLowerNeverWrittenThroughROFd). A node
// that had a handle through the daemon keeps going through the daemon
// until it is forgotten: go-fuse counts a release of any handle against
// the backing file, so the two kinds must not overlap, not even while a
// release is on its way.
//
// Privileges: a write through passthrough runs with the daemon's
// credentials, so the kernel's rule of removing setuid and setgid on a
// write by anyone but root (killpriv.go) cannot apply there; it does
// remove security.capability, as for any writer. Hence root or read-only
// openers only, as above; a user other than root who opens a file for
// writing while it has passthrough handles has its privileges removed at
// once, and the file cannot be made setuid or setgid (ETXTBSY) while such a
// handle is open.
//
// Commit: passthrough writes do not take the stack's hold. Commit keeps
// each file open through passthrough in the upper, where the kernel goes
// on writing it, and puts a copy of it into the committed layer (see
// liveFiles and cow.Stack.Commit).

// openCount counts the open handles of a node by kind; Node.mu guards it.
type openCount struct {
	daemon, pt int
	// ptOthers counts the passthrough handles open for writing by a
	// user other than root.
	ptOthers int
	// daemonOnce is set once the node had a handle through the daemon.
	daemonOnce bool
	// writer is a handle open for writing on the node's file in the
	// upper, for changes of attributes to go through (attr.go), or nil.
	writer *handle
}

// ptHandle is a handle whose reads and writes the kernel does itself, on
// the handle's file in the upper.
type ptHandle struct{ *handle }

var _ = (fusefs.FilePassthroughFder)(ptHandle{})

// PassthroughFd implements fusefs.FilePassthroughFder. go-fuse registers
// the descriptor of the first passthrough open of a node as its backing
// file, and uses that one for the node's other passthrough opens.
func (h ptHandle) PassthroughFd() (int, bool) { return h.fd, true }

// asHandle returns the handle inside a file handle of this package.
func asHandle(f fusefs.FileHandle) (*handle, bool) {
	switch h := f.(type) {
	case *handle:
		return h, true
	case ptHandle:
		return h.handle, true
	}
	return nil, false
}

// errNotOpened: the handle must be opened before it is counted.
var errNotOpened = errors.New("handle not opened yet")

// opened counts a handle about to be returned for an open with flags
// (fresh: the file was just created by the opener), and returns it as a
// passthrough handle when it is to be one.
func (n *Node) opened(ctx context.Context, h *handle, flags uint32, dataUpper, fresh bool) (fusefs.FileHandle, error) {
	fd := h.fd
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	c, ok := fuse.FromContext(ctx)
	other := write && (!ok || c.Uid != 0)
	n.mu.Lock()
	defer n.mu.Unlock()
	pt := false
	switch {
	case n.open.pt > 0 && fd < 0:
		// A handle not opened yet (file.go) cannot join them.
		return nil, errNotOpened
	case n.open.pt > 0:
		pt = true
		if other {
			// Its writes will not reach the daemon. The kernel
			// then asks for the attributes again.
			if err := n.killPriv(ctx, fd); err != nil {
				return nil, err
			}
			n.NotifyContent(-1, 0)
		}
	case n.open.daemon > 0 || n.open.daemonOnce || !n.reg.passthrough.Load() || !dataUpper || other:
	default:
		pt = fresh || singleLink(fd)
	}
	h.pt, h.other = pt, pt && other
	if write && h.upper {
		n.open.writer = h
	}
	if !pt {
		n.open.daemon++
		n.open.daemonOnce = true
		return h, nil
	}
	n.open.pt++
	if h.other {
		n.open.ptOthers++
	}
	return ptHandle{h}, nil
}

// singleLink reports whether fd is a regular file with one link.
func singleLink(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1
}

// unlinked reports whether fd is a file without links.
func unlinked(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Nlink == 0
}

// closed uncounts the handle h.
func (n *Node) closed(h *handle) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.open.writer == h {
		n.open.writer = nil
	}
	switch {
	case !h.pt:
		n.open.daemon--
	default:
		n.open.pt--
		if h.other {
			n.open.ptOthers--
		}
	}
}

// mayGainPrivs reports whether the node's file may be made setuid or
// setgid now; see the package doc.
func (n *Node) mayGainPrivs() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.open.ptOthers == 0
}

// probePassthrough reports whether the kernel takes backing files from
// this daemon: it registers an unnamed file in dir, the upper, and drops
// it again.
func probePassthrough(server *transport, dir string) error {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	id, errno := server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
	if errno != 0 {
		return errno
	}
	server.UnregisterBackingFd(id)
	return nil
}

// liveFiles returns the paths of the files that have passthrough handles
// open, for a commit to keep in the upper. The stack is held exclusively,
// so no request changes the tree meanwhile.
func (s *Server) liveFiles() []string {
	reg := s.root.reg
	reg.mu.Lock()
	nodes := make([]*Node, 0, len(reg.m))
	for _, n := range reg.m {
		nodes = append(nodes, n)
	}
	reg.mu.Unlock()
	var rels []string
	for _, n := range nodes {
		n.mu.Lock()
		live := n.open.pt > 0
		n.mu.Unlock()
		if !live {
			continue
		}
		if rel, ok := n.rel(); ok {
			rels = append(rels, rel)
		}
	}
	return rels
}
