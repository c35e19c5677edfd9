package cow

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// MaxLowers is the most lower layers a stack may have, as in the kernel
// (OVL_MAX_STACK).
const MaxLowers = 500

// Config names the directories of a stack.
type Config struct {
	// Lowers are the read-only layers, top-most first.
	Lowers []string
	// Upper is the writable layer; empty for a read-only union.
	Upper string
	// Work is the work directory on the upper's filesystem; required
	// with Upper. Copy-ups are built in its "work" subdirectory, as the
	// kernel does, and renamed into place.
	Work string
	// UserXattr selects the user.* xattr namespace for the union's own
	// xattrs (the kernel's userxattr mode), as needed without root.
	UserXattr bool
	// Metacopy lets a change of metadata copy up only the metadata of a
	// big regular file (metacopy.go). Metadata-only copies are read
	// whatever it says.
	Metacopy bool
	// Volatile skips every fsync, for throwaway uppers, as the kernel's
	// "volatile" option does (see volatile.go).
	Volatile bool
	// Exclusive promises that nothing but this stack changes the layers
	// while it is open, so that it may remember what it saw there: which
	// directories the upper lacks (Stack.upperDirAbsent) and which
	// names a merged directory's lowers hold (lowerNames). Without it,
	// every lookup looks at every layer.
	Exclusive bool
}

// Stack is an opened set of layers.
//
// Lock order: a copy-up lock (Stack.copyLock), then Stack.ns. Stack.ns is
// never held while waiting for a copy-up lock, so operations that need a
// copy-up (rename, link) do it before taking Stack.ns.
type Stack struct {
	cfg    Config
	upper  *Layer // nil for a read-only union
	work   *Layer // the "work" directory inside Config.Work
	index  *Layer // the "linkindex" directory inside Config.Work
	lowers []*Layer

	// ns serializes changes to the upper's namespace (create, remove,
	// rename, copy-up's final rename), so that a check of the merged
	// view and the change that depends on it are atomic.
	ns sync.Mutex

	// copying serializes copy-ups of one path, so that concurrent
	// copy-ups of one file happen once; paths share the locks by hash.
	copying [64]sync.Mutex

	tmpSeq atomic.Uint64
	root   bool // running as root: can chown and set trusted.* xattrs

	// live is held shared by each request (Hold) and exclusively by
	// Commit, which changes the set of layers; gen counts commits.
	live sync.RWMutex
	gen  atomic.Uint64

	// marked is set when this stack made the volatile marker.
	marked bool

	onDirCopyUp func(rel string) // see OnDirCopyUp
}

// Open opens the layers named by cfg and prepares the work directory,
// removing copies that a crash left half-built there.
func Open(cfg Config) (*Stack, error) {
	if len(cfg.Lowers) == 0 {
		return nil, fmt.Errorf("no lower layer: %w", unix.EINVAL)
	}
	if len(cfg.Lowers) > MaxLowers {
		return nil, fmt.Errorf("%d lower layers, at most %d allowed: %w", len(cfg.Lowers), MaxLowers, unix.EINVAL)
	}
	if cfg.Upper != "" && cfg.Work == "" {
		return nil, fmt.Errorf("an upper layer needs a work directory: %w", unix.EINVAL)
	}
	s := &Stack{cfg: cfg, root: os.Geteuid() == 0}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if cfg.Upper != "" {
		u, err := openLayer(cfg.Upper, true)
		if err != nil {
			return nil, err
		}
		s.upper = u
		if err := checkVolatile(cfg.Work); err != nil {
			return nil, err
		}
		w, err := prepareWork(cfg.Work, u.dev)
		if err != nil {
			return nil, err
		}
		if cfg.Volatile {
			if err := markVolatile(cfg.Work); err != nil {
				return nil, err
			}
			s.marked = true
		}
		s.work = w
		if err := os.Mkdir(cfg.Work+"/linkindex", 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create link index: %w", err)
		}
		if s.index, err = openLayer(cfg.Work+"/linkindex", true); err != nil {
			return nil, err
		}
	}
	var committed []string
	if cfg.Upper != "" {
		var err error
		if committed, err = committedLayers(cfg.Work); err != nil {
			return nil, err
		}
		if n := len(committed) + len(cfg.Lowers); n > MaxLowers {
			return nil, fmt.Errorf("%d lower layers with the %d committed ones, at most %d allowed: %w", n, len(committed), MaxLowers, unix.EINVAL)
		}
	}
	for i, d := range append(committed, cfg.Lowers...) {
		l, err := openLayer(d, false)
		if err != nil {
			return nil, err
		}
		l.committed = i < len(committed)
		s.lowers = append(s.lowers, l)
	}
	s.assignInoHigh()
	ok = true
	return s, nil
}

// prepareWork opens (creating if needed) dir/work and empties it: what is
// there is left from an interrupted copy-up and was never visible.
func prepareWork(dir string, upperDev uint64) (*Layer, error) {
	wd := dir + "/work"
	if err := os.Mkdir(wd, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create work directory: %w", err)
	}
	w, err := openLayer(wd, true)
	if err != nil {
		return nil, err
	}
	if w.dev != upperDev {
		w.close()
		return nil, fmt.Errorf("work directory %s is not on the upper layer's filesystem: %w", dir, unix.EXDEV)
	}
	names, err := readNames(w, "")
	if err != nil {
		w.close()
		return nil, err
	}
	for _, n := range names {
		if err := removeAll(w, n); err != nil {
			w.close()
			return nil, fmt.Errorf("clean work directory: %w", err)
		}
	}
	return w, nil
}

// assignInoHigh gives each filesystem of the stack its own high inode bits,
// unless all layers share one filesystem, where inode numbers are unique as
// they are.
func (s *Stack) assignInoHigh() {
	var devs []uint64
	index := map[uint64]int{}
	for _, l := range s.layers() {
		if _, ok := index[l.dev]; !ok {
			index[l.dev] = len(devs)
			devs = append(devs, l.dev)
		}
	}
	if len(devs) == 1 {
		return
	}
	nbits := bits.Len(uint(len(devs) - 1))
	for _, l := range s.layers() {
		l.inoHigh = uint64(index[l.dev]) << (63 - nbits)
	}
}

// layers returns the upper (if any) and the lowers, top-down.
func (s *Stack) layers() []*Layer {
	if s.upper == nil {
		return s.lowers
	}
	return append([]*Layer{s.upper}, s.lowers...)
}

// Close releases the stack's file descriptors. A volatile stack first
// writes its upper's filesystem out and then drops its marker: the upper
// is whole again.
func (s *Stack) Close() error {
	var err error
	if s.marked {
		err = unmarkVolatile(s.cfg.Work)
	}
	for _, l := range s.layers() {
		l.close()
	}
	if s.work != nil {
		s.work.close()
	}
	if s.index != nil {
		s.index.close()
	}
	return err
}

// ReadOnly reports whether the stack has no upper layer.
func (s *Stack) ReadOnly() bool { return s.upper == nil }

// Statfs reports on the filesystem of the upper layer, or of the top lower
// of a read-only union.
func (s *Stack) Statfs() (unix.Statfs_t, error) {
	var st unix.Statfs_t
	l := s.layers()[0]
	err := unix.Fstatfs(l.fd, &st)
	return st, err
}

// tmpName returns a fresh name for a copy in the work directory.
func (s *Stack) tmpName() string {
	return "#" + strconv.FormatUint(uint64(os.Getpid()), 16) + "-" + strconv.FormatUint(s.tmpSeq.Add(1), 16)
}

// copyLock locks the copy-up lock of rel and returns its unlock.
func (s *Stack) copyLock(rel string) func() {
	h := fnv.New32a()
	h.Write([]byte(rel))
	m := &s.copying[h.Sum32()%uint32(len(s.copying))]
	m.Lock()
	return m.Unlock
}

var (
	errRO        = os.PathError{Op: "write", Path: "union", Err: unix.EROFS}
	pathErrNoent = os.PathError{Op: "lookup", Path: "lower", Err: unix.ENOENT}
)

// UpperDir returns the upper directory, "" for a read-only stack.
func (s *Stack) UpperDir() string {
	if s.upper == nil {
		return ""
	}
	return s.cfg.Upper
}
