package fs

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
)

// nodes finds the live node of a merged object by its inode number, so that
// a lookup through any of its names refreshes the node that go-fuse uses
// for all of them (hard links share one).
type nodes struct {
	mu sync.Mutex
	m  map[uint64]*Node
	// passthrough is set once the kernel took a backing file from the
	// daemon (passthrough.go).
	passthrough atomic.Bool
	// yield paces the requests' passes through the scheduler (sched.go).
	yield yielder
	// openless is set when the kernel opens directories itself
	// (opendir.go).
	openless atomic.Bool
	// noOpen is set when the kernel opens files itself, and kfiles
	// serves the requests on those files (noopen.go).
	noOpen atomic.Bool
	kfiles kernelFiles
}

// Node is one merged object.
type Node struct {
	fusefs.Inode
	st  *cow.Stack
	reg *nodes

	// mu protects obj, stale and open.
	mu  sync.Mutex
	obj *cow.Object
	// stale is set when obj may no longer describe the object (its tree
	// was copied up by a rename); the next use looks it up again.
	stale bool
	// tmpfd is the open descriptor of an O_TMPFILE file until it is
	// linked into place, else -1.
	tmpfd int
	// ttl is how long the kernel may keep attributes, and keep lets it
	// keep file data and directory listings across opens (see Cache);
	// both immutable.
	ttl  time.Duration
	keep bool
	// noPrivs is set once the file was seen without setuid, setgid or
	// security.capability, and cleared when its attributes change; see
	// killPriv.
	noPrivs atomic.Bool
	// open counts the node's open handles by kind (passthrough.go).
	open openCount
	// kf serves the files the kernel opened itself; nodes.kfiles.mu
	// guards it (noopen.go).
	kf *kernelFile
	// xattrs says whether obj, when frozen (cow.Object.Frozen), has
	// xattrs; setObject and invalidate forget it.
	xattrs atomic.Int32
}

// The states of Node.xattrs.
const (
	xattrsUnknown int32 = iota
	xattrsNone
	xattrsSome
)

// knowXattrs records whether o, n's frozen object, has xattrs, unless n's
// object changed meanwhile.
func (n *Node) knowXattrs(o *cow.Object, some bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.obj != o || n.stale {
		return
	}
	if some {
		n.xattrs.Store(xattrsSome)
	} else {
		n.xattrs.Store(xattrsNone)
	}
}

func (n *Node) newNode(o *cow.Object) *Node {
	return &Node{st: n.st, reg: n.reg, obj: o, tmpfd: -1, ttl: n.ttl, keep: n.keep}
}

func (n *Node) idFor(o *cow.Object) fusefs.StableAttr {
	return fusefs.StableAttr{Mode: o.Mode & unix.S_IFMT, Ino: o.Ino}
}

// rel returns the node's path relative to the layer roots, and false when
// the node has no name any more.
func (n *Node) rel() (string, bool) {
	var segs []string
	p := &n.Inode
	for !p.IsRoot() {
		name, parent := p.Parent()
		if parent == nil {
			return "", false
		}
		segs = append(segs, name)
		p = parent
	}
	size := 0
	for _, s := range segs {
		size += len(s) + 1
	}
	b := make([]byte, 0, size)
	for i := len(segs) - 1; i >= 0; i-- {
		if len(b) > 0 {
			b = append(b, '/')
		}
		b = append(b, segs[i]...)
	}
	return string(b), true
}

// hold takes the stack's hold for one request (cow.Stack.Hold); every
// request that reaches the daemon's code comes through here, so it is
// also where the goroutine serving it may yield (sched.go).
func (n *Node) hold() (release func()) {
	n.reg.yield.maybe()
	return n.st.Hold()
}

// object returns the node's path and current object, looking it up again
// if it went stale.
func (n *Node) object() (string, *cow.Object, syscall.Errno) {
	rel, ok := n.rel()
	n.mu.Lock()
	o, stale := n.obj, n.stale
	n.mu.Unlock()
	if !ok {
		// Removed meanwhile; an open handle still works on its own.
		return "", o, syscall.ENOENT
	}
	if !stale || n.IsRoot() {
		return rel, o, 0
	}
	name, parent := n.Parent()
	if parent == nil {
		return rel, o, syscall.ENOENT
	}
	pn := parent.Operations().(*Node)
	prel, po, e := pn.object()
	if e != 0 {
		return rel, o, e
	}
	fresh, err := n.st.Lookup(po, prel, name)
	if err != nil {
		return rel, o, errno(err)
	}
	n.setObject(fresh)
	return rel, fresh, 0
}

func (n *Node) setObject(o *cow.Object) {
	n.mu.Lock()
	n.obj = o
	n.stale = false
	n.xattrs.Store(xattrsUnknown)
	n.mu.Unlock()
}

// movedFrom reports whether n's object may no longer be o: a copy-up,
// a rename or a lookup replaced it, or it is stale.
func (n *Node) movedFrom(o *cow.Object) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stale || n.obj != o
}

// invalidate marks n stale.
func (n *Node) invalidate() {
	n.mu.Lock()
	n.stale = true
	n.xattrs.Store(xattrsUnknown)
	n.mu.Unlock()
}

// invalidateTree marks n and every node below it stale.
func (n *Node) invalidateTree() {
	n.invalidate()
	for _, ch := range n.Children() {
		ch.Operations().(*Node).invalidateTree()
	}
}

// child returns the inode for o, named name in n: the existing one when
// the object has one, else a new one.
func (n *Node) child(ctx context.Context, name string, o *cow.Object) *fusefs.Inode {
	id := n.idFor(o)
	n.reg.mu.Lock()
	defer n.reg.mu.Unlock()
	if old, ok := n.reg.m[o.Ino]; ok && old.StableAttr() == id && !old.Forgotten() {
		old.setObject(o)
		return old.EmbeddedInode()
	}
	c := n.newNode(o)
	ch := n.NewInode(ctx, c, id)
	n.reg.m[o.Ino] = c
	return ch
}

var _ = (fusefs.NodeOnForgetter)((*Node)(nil))

// OnForget implements fusefs.NodeOnForgetter.
func (n *Node) OnForget() {
	if n.reg == nil {
		return
	}
	n.reg.mu.Lock()
	if n.reg.m[n.StableAttr().Ino] == n {
		delete(n.reg.m, n.StableAttr().Ino)
	}
	n.reg.mu.Unlock()
	n.mu.Lock()
	if n.tmpfd >= 0 {
		unix.Close(n.tmpfd)
		n.tmpfd = -1
	}
	n.mu.Unlock()
	n.unpin()
}

// owner returns the caller of a request.
func owner(ctx context.Context) cow.Owner {
	if c, ok := fuse.FromContext(ctx); ok {
		return cow.Owner{UID: c.Uid, GID: c.Gid}
	}
	return cow.Owner{}
}

// fillAttr copies st into out.
func fillAttr(out *fuse.Attr, st *unix.Stat_t) {
	out.Ino = st.Ino
	out.Size = uint64(st.Size)
	out.Blocks = uint64(st.Blocks)
	out.Atime = uint64(st.Atim.Sec)
	out.Atimensec = uint32(st.Atim.Nsec)
	out.Mtime = uint64(st.Mtim.Sec)
	out.Mtimensec = uint32(st.Mtim.Nsec)
	out.Ctime = uint64(st.Ctim.Sec)
	out.Ctimensec = uint32(st.Ctim.Nsec)
	out.Mode = st.Mode
	out.Nlink = uint32(st.Nlink)
	out.Uid = st.Uid
	out.Gid = st.Gid
	out.Rdev = uint32(st.Rdev)
	out.Blksize = uint32(st.Blksize)
}
