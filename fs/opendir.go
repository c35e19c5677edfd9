package fs

import (
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Directories open without a round trip to the daemon.
//
// When the daemon answers OPENDIR with ENOSYS, the kernel stops sending
// OPENDIR and RELEASEDIR for the rest of the mount and opens every
// directory itself, with the flags a cached listing needs
// (FOPEN_KEEP_CACHE|FOPEN_CACHE_DIR: fs/fuse/file.c, fuse_do_open). Its
// READDIR requests then carry file handle 0. With listings cached, a
// directory's READDIRs reach the daemon only when its listing is not in
// the kernel's cache, so a walk of a warm tree (find, du, ls -lR, tar)
// no longer costs an OPENDIR and a RELEASEDIR for each directory: a
// second find over the bench's quick tree (205 directories) sent 598
// requests, and now sends 188.
//
// go-fuse's node bridge serves READDIR only through a handle of its own,
// so openless wraps the bridge. A READDIR with handle 0 at offset 0 opens a
// handle in the bridge, which lists the merged directory once; while the
// listing goes on, the handle waits under the offset its next READDIR will
// ask for, and the READDIR that asks for it takes it. Two programs reading
// one directory each keep their own listing, with its own offsets, as they
// would with handles of their own. A READDIR at an offset no waiting handle
// has (a seek, or a handle evicted) opens one that seeks there. A handle
// is released at the end of its listing, when evicted, and before the
// kernel's FORGET of the directory reaches the bridge, which must not
// forget a node with a handle open.
//
// A listing the kernel serves from its cache never reaches the daemon,
// whose read of an upper directory moves its atime; Node.atimeDue
// (dir.go) drops the cached listing whenever relatime would move the
// atime at the next listing.
//
// Without cached listings (a timeout of 0, for lowers that change while
// mounted) every open of a directory must list it afresh, so OPENDIR
// stays.
type openless struct {
	fuse.RawFileSystem

	// on is set at INIT when the kernel can open directories itself
	// (FUSE_NO_OPENDIR_SUPPORT, Linux 5.1); before that, ENOSYS would
	// fail the open. It is also stored in the nodes' registry.
	on *atomic.Bool

	mu      sync.Mutex
	waiting map[uint64]map[uint64]uint64 // node ID → next offset → handle
	n       int                          // handles in waiting
}

// maxWaiting bounds the handles kept for listings that programs stopped
// reading before their end; each holds a merged directory listing.
const maxWaiting = 256

func newOpenless(raw fuse.RawFileSystem, on *atomic.Bool) *openless {
	return &openless{RawFileSystem: raw, on: on, waiting: map[uint64]map[uint64]uint64{}}
}

// init learns from the kernel's INIT request whether it can open
// directories itself; the transport calls it before any other request.
func (o *openless) init(kernel uint64) {
	o.on.Store(kernel&fuse.CAP_NO_OPENDIR_SUPPORT != 0)
}

// OpenDir tells the kernel to open directories itself.
func (o *openless) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if !o.on.Load() {
		return o.RawFileSystem.OpenDir(cancel, in, out)
	}
	return fuse.ENOSYS
}

// ReadDir implements fuse.RawFileSystem.
func (o *openless) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if in.Fh != 0 {
		return o.RawFileSystem.ReadDir(cancel, in, out)
	}
	return o.read(cancel, in, out, o.RawFileSystem.ReadDir)
}

// ReadDirPlus implements fuse.RawFileSystem.
func (o *openless) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if in.Fh != 0 {
		return o.RawFileSystem.ReadDirPlus(cancel, in, out)
	}
	return o.read(cancel, in, out, o.RawFileSystem.ReadDirPlus)
}

func (o *openless) read(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList,
	readdir func(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status) fuse.Status {
	fh := o.take(in.NodeId, in.Offset)
	if fh == 0 {
		var st fuse.Status
		if fh, st = o.open(cancel, in.InHeader); !st.Ok() {
			return st
		}
	}
	rin := *in
	rin.Fh = fh
	st := readdir(cancel, &rin, out)
	if !st.Ok() || out.Offset == in.Offset {
		// An error, or the end of the listing.
		o.release(in.NodeId, fh)
		return st
	}
	o.wait(in.NodeId, out.Offset, fh)
	return st
}

// open opens a handle in the bridge for the directory of h.
func (o *openless) open(cancel <-chan struct{}, h fuse.InHeader) (uint64, fuse.Status) {
	var out fuse.OpenOut
	st := o.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: h, Flags: syscall.O_RDONLY}, &out)
	return out.Fh, st
}

func (o *openless) release(id, fh uint64) {
	o.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: id}, Fh: fh})
}

// take returns the handle waiting for a READDIR of directory id at off,
// or 0. Offset 0 starts a new listing.
func (o *openless) take(id, off uint64) uint64 {
	if off == 0 {
		return 0
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	fh := o.waiting[id][off]
	if fh != 0 {
		o.unwaitLocked(id, off)
	}
	return fh
}

// wait keeps fh for the READDIR of directory id at off.
func (o *openless) wait(id, off, fh uint64) {
	var evicted [][2]uint64
	o.mu.Lock()
	byOff := o.waiting[id]
	if byOff == nil {
		byOff = map[uint64]uint64{}
		o.waiting[id] = byOff
	}
	if old := byOff[off]; old != 0 {
		// Two listings at one offset: the older one gives way.
		evicted = append(evicted, [2]uint64{id, old})
		o.n--
	}
	byOff[off] = fh
	o.n++
	for eid, m := range o.waiting {
		if o.n <= maxWaiting {
			break
		}
		for eoff, efh := range m {
			if eid != id || eoff != off {
				evicted = append(evicted, [2]uint64{eid, efh})
				o.unwaitLocked(eid, eoff)
				break
			}
		}
	}
	o.mu.Unlock()
	for _, e := range evicted {
		o.release(e[0], e[1])
	}
}

func (o *openless) unwaitLocked(id, off uint64) {
	delete(o.waiting[id], off)
	if len(o.waiting[id]) == 0 {
		delete(o.waiting, id)
	}
	o.n--
}

// FsyncDir implements fuse.RawFileSystem.
func (o *openless) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	if in.Fh != 0 {
		return o.RawFileSystem.FsyncDir(cancel, in)
	}
	fh, st := o.open(cancel, in.InHeader)
	if !st.Ok() {
		return st
	}
	fin := *in
	fin.Fh = fh
	st = o.RawFileSystem.FsyncDir(cancel, &fin)
	o.release(in.NodeId, fh)
	return st
}

// Forget implements fuse.RawFileSystem: a directory's handles go before
// its node does.
func (o *openless) Forget(id, nlookup uint64) {
	o.mu.Lock()
	byOff := o.waiting[id]
	delete(o.waiting, id)
	o.n -= len(byOff)
	o.mu.Unlock()
	for _, fh := range byOff {
		o.release(id, fh)
	}
	o.RawFileSystem.Forget(id, nlookup)
}
