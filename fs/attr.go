package fs

import (
	"context"
	"strings"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
)

var _ = (fusefs.NodeGetattrer)((*Node)(nil))

// Getattr implements fusefs.NodeGetattrer.
func (n *Node) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	defer n.hold()()
	if h, ok := asHandle(f); ok {
		return h.getattr(out)
	}
	e := n.getattr(&out.Attr)
	if e == syscall.ENOENT && f == nil {
		// Without a name, a file the kernel opened itself is still
		// there (noopen.go).
		if h := n.pinned(); h != nil {
			return h.getattr(out)
		}
	}
	return e
}

// getattr fills out with the attributes of n's object.
func (n *Node) getattr(out *fuse.Attr) syscall.Errno {
	rel, o, e := n.object()
	if e != 0 {
		return e
	}
	st, err := n.st.Stat(o, rel)
	if err != nil {
		return errno(err)
	}
	fillAttr(out, &st)
	return 0
}

var _ = (fusefs.NodeSetattrer)((*Node)(nil))

// Setattr implements fusefs.NodeSetattrer.
func (n *Node) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	defer n.hold()()
	rel, o, e := n.object()
	if e != 0 {
		return e
	}
	a := cow.Attr{FromHandle: -1}
	if m, ok := in.GetMode(); ok {
		if m&(unix.S_ISUID|unix.S_ISGID) != 0 && !n.mayGainPrivs() {
			return syscall.ETXTBSY
		}
		a.Mode = &m
	}
	if uid, ok := in.GetUID(); ok {
		a.UID = &uid
	}
	if gid, ok := in.GetGID(); ok {
		a.GID = &gid
	}
	if sz, ok := in.GetSize(); ok {
		a.Size = &sz
		if h, ok := asHandle(f); ok {
			fd, err := h.writable()
			if err != nil {
				return errno(err)
			}
			a.FromHandle = fd
		}
	}
	a.Atime = timespec(in.Valid, fuse.FATTR_ATIME, fuse.FATTR_ATIME_NOW, in.Atime, in.Atimensec)
	a.Mtime = timespec(in.Valid, fuse.FATTR_MTIME, fuse.FATTR_MTIME_NOW, in.Mtime, in.Mtimensec)
	c, st, err := n.setattr(o, rel, a)
	if err != nil {
		return errno(err)
	}
	n.setObject(c)
	n.atimeDue()
	if a.Mode != nil || a.UID != nil || a.GID != nil {
		n.noPrivs.Store(false)
	}
	// A truncate removes privileges; a file known to have none (most,
	// after their first write) is spared the open and the second stat.
	if a.Size != nil && c.Mode&syscall.S_IFMT == syscall.S_IFREG && !n.noPrivs.Load() {
		if fd, _, err := n.st.Open(c, rel, syscall.O_WRONLY); err == nil {
			err = n.killPriv(ctx, fd)
			unix.Close(fd)
			if err != nil {
				return errno(err)
			}
		}
		// Removing privileges may have changed the mode.
		if st, err = n.st.Stat(c, rel); err != nil {
			return errno(err)
		}
	}
	fillAttr(&out.Attr, &st)
	out.SetTimeout(n.ttl)
	return 0
}

// setattr makes the changes a to n's object o at rel: through the
// descriptor of a file open for writing in the upper when n has one, which
// spares the walk to it (a tar extracting a file sets its times, owner and
// mode while it has it open).
func (n *Node) setattr(o *cow.Object, rel string, a cow.Attr) (*cow.Object, unix.Stat_t, error) {
	if a.FromHandle < 0 {
		n.mu.Lock()
		h := n.open.writer
		n.mu.Unlock()
		if h != nil {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.fd >= 0 && h.inUpper() {
				a.FromHandle = h.fd
			}
		}
	}
	return n.st.Setattr(o, rel, a)
}

func timespec(valid, set, now uint32, sec uint64, nsec uint32) *unix.Timespec {
	switch {
	case valid&now != 0:
		return &unix.Timespec{Nsec: unix.UTIME_NOW}
	case valid&set != 0:
		return &unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
	}
	return nil
}

var _ = (fusefs.NodeReadlinker)((*Node)(nil))

// Readlink implements fusefs.NodeReadlinker.
func (n *Node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	defer n.hold()()
	rel, o, e := n.object()
	if e != 0 {
		return nil, e
	}
	t, err := n.st.Readlink(o, rel)
	if err != nil {
		return nil, errno(err)
	}
	return []byte(t), 0
}

var _ = (fusefs.NodeGetxattrer)((*Node)(nil))

// Getxattr implements fusefs.NodeGetxattrer.
func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	// Answers from memory below need no hold, but every request
	// passes the yield (sched.go); it is done here, once.
	n.reg.yield.maybe()
	if attr == "security.capability" && n.noPrivs.Load() {
		// The kernel asks before writes and chowns; a file known to
		// have none is answered without a system call.
		return 0, syscall.ENODATA
	}
	if n.xattrs.Load() == xattrsNone {
		return 0, syscall.ENODATA
	}
	defer n.st.Hold()()
	rel, o, e := n.object()
	if e != 0 {
		return 0, e
	}
	if o.Frozen() && n.xattrs.Load() == xattrsUnknown {
		// ls -l asks every file for security.selinux, which most
		// have no more than any other xattr: one look at the list
		// answers every later question about a frozen object.
		names, err := n.st.Listxattr(o, rel)
		if err == nil {
			n.knowXattrs(o, len(names) > 0)
			if len(names) == 0 {
				return 0, syscall.ENODATA
			}
		}
	}
	v, err := n.st.Getxattr(o, rel, attr)
	if err != nil {
		return 0, errno(err)
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

var _ = (fusefs.NodeListxattrer)((*Node)(nil))

// Listxattr implements fusefs.NodeListxattrer.
func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	defer n.hold()()
	rel, o, e := n.object()
	if e != 0 {
		return 0, e
	}
	names, err := n.st.Listxattr(o, rel)
	if err != nil {
		return 0, errno(err)
	}
	var b strings.Builder
	for _, nm := range names {
		b.WriteString(nm)
		b.WriteByte(0)
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), syscall.ERANGE
	}
	return uint32(copy(dest, b.String())), 0
}

var _ = (fusefs.NodeSetxattrer)((*Node)(nil))

// Setxattr implements fusefs.NodeSetxattrer.
func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	defer n.hold()()
	rel, o, e := n.object()
	if e != 0 {
		return e
	}
	c, err := n.st.Setxattr(o, rel, attr, data, int(flags))
	if err != nil {
		return errno(err)
	}
	n.setObject(c)
	n.atimeDue()
	n.noPrivs.Store(false)
	return 0
}

var _ = (fusefs.NodeRemovexattrer)((*Node)(nil))

// Removexattr implements fusefs.NodeRemovexattrer.
func (n *Node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	defer n.hold()()
	rel, o, e := n.object()
	if e != 0 {
		return e
	}
	c, err := n.st.Removexattr(o, rel, attr)
	if err != nil {
		return errno(err)
	}
	n.setObject(c)
	n.atimeDue()
	return 0
}
