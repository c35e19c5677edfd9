package fs

import (
	"fmt"
	"log"
	"os"
	"slices"
	"strconv"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
)

// Cache is the kernel caching policy of a mount.
//
// The daemon is the only writer of the upper and the lowers do not change
// while mounted, so every change the merged view shows is made through the
// mount, and the kernel updates or drops its own caches as it makes it
// (names, attributes, directory listings, page cache). The caches can then
// live long: only changes made to the layers behind the union's back need a
// short Timeout, and with zero nothing is cached.
type Cache struct {
	// Timeout is how long the kernel keeps names, attributes and failed
	// lookups without asking again.
	Timeout time.Duration
	// Passthrough says whether the kernel reads and writes files in the
	// upper itself (passthrough.go).
	Passthrough Passthrough
}

// Passthrough is the choice between passthrough (passthrough.go) and
// opens without the daemon (noopen.go): the kernel cannot have both for a
// file.
type Passthrough int

const (
	// PassthroughAuto opens files without the daemon where the kernel
	// checks permissions itself and caches are on, and otherwise uses
	// passthrough where the kernel has it.
	PassthroughAuto Passthrough = iota
	// PassthroughOn uses passthrough where the kernel has it, and every
	// open reaches the daemon.
	PassthroughOn
	// PassthroughOff keeps all file data going through the daemon.
	PassthroughOff
)

// DefaultCache is the caching policy for layers that do not change while
// mounted.
var DefaultCache = Cache{Timeout: 24 * time.Hour}

// Mount serves the merged view of st at mountpoint. mo carries the
// lifecycle options (allow_other, fsname, debug); Mount adds the caching
// policy and returns once the kernel has the mount.
func Mount(mountpoint string, st *cow.Stack, mo fuse.MountOptions, cache Cache) (*Server, error) {
	root, err := st.Root()
	if err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	// Modes of new objects arrive with the caller's umask applied; the
	// daemon's own must not apply a second time.
	unix.Umask(0)
	// With default_permissions the kernel checks permissions; with ACL
	// support it checks POSIX ACLs too, as ext4 does, reading them
	// through getxattr.
	if slices.Contains(mo.Options, "default_permissions") {
		mo.EnableAcl = true
	}
	// Writes of up to 1 MiB travel in one request (128 KiB by default).
	if mo.MaxWrite == 0 {
		mo.MaxWrite = 1 << 20
	}
	// The daemon removes privileges on write itself (see killpriv.go).
	mo.ExtraCapabilities |= fuse.CAP_HANDLE_KILLPRIV_V2
	opts := &fusefs.Options{
		MountOptions:    mo,
		EntryTimeout:    &cache.Timeout,
		AttrTimeout:     &cache.Timeout,
		NegativeTimeout: &cache.Timeout,
		NullPermissions: true,
		RootStableAttr:  &fusefs.StableAttr{Mode: unix.S_IFDIR, Ino: root.Ino},
	}
	rootNode := &Node{st: st, reg: &nodes{m: map[uint64]*Node{}, yield: newYielder()}, obj: root, tmpfd: -1, ttl: cache.Timeout, keep: cache.Timeout > 0}
	// The node bridge, served by transport.go: go-fuse's protocol server
	// decodes the requests and calls the bridge; the notifications and
	// the backing files go to the kernel through the transport.
	tr := newTransport(mo.MaxWrite)
	opts.ServerCallbacks = tr
	var raw fuse.RawFileSystem = fusefs.NewNodeFS(rootNode, opts)
	// A mount the kernel keeps read-only (noopen.go relies on it to
	// refuse every write: no OPEN would reach the daemon to refuse it).
	readOnly := mo.DirectMountFlags&unix.MS_RDONLY != 0 || slices.Contains(mo.Options, "ro")
	noPassthrough := cache.Passthrough == PassthroughOff
	if rootNode.keep {
		ol := newOpenless(raw, &rootNode.reg.openless)
		raw = ol
		tr.onInit = ol.init
		// Files open without the daemon where the kernel checks
		// permissions itself (noopen.go).
		if readOnly || slices.Contains(mo.Options, "default_permissions") && cache.Passthrough != PassthroughOn {
			no := newNoOpen(raw, &rootNode.reg.noOpen)
			raw = no
			tr.onInit = func(kernel uint64) { ol.init(kernel); no.init(kernel) }
			// The kernel refuses (EIO) an open it makes itself of a
			// file with a passthrough handle open (fs/fuse/iomode.c).
			noPassthrough = true
		}
		st.OnDirCopyUp(func(rel string) {
			if n := rootNode.nodeAt(rel); n != nil {
				n.invalidate() // its object is the lower one
				n.atimeDue()
			}
		})
	}
	fd, err := mountFuse(mountpoint, &opts.MountOptions)
	if err != nil {
		return nil, err
	}
	tr.serve(fd, fuse.NewProtocolServer(raw, &opts.MountOptions))
	<-tr.inited
	// Passthrough needs root (CAP_SYS_ADMIN) and a kernel that has it;
	// without either, every handle goes through the daemon.
	if upper := st.UpperDir(); !noPassthrough && upper != "" {
		if err := probePassthrough(tr, upper); err != nil {
			log.Printf("passthrough off: the kernel refuses backing files: %v", err)
		} else {
			rootNode.reg.passthrough.Store(true)
		}
	}
	raiseReadahead(mountpoint, mo.MaxWrite)
	spareProcs()
	return &Server{tr: tr, mountpoint: mountpoint, root: rootNode}, nil
}

// raiseReadahead lets the kernel read ahead up to size bytes of a file
// read in sequence, in requests as large as that, where its default for a
// FUSE mount is 128 KiB: a cold sequential read from a disk then runs two
// to three times as fast here. The knob is the mount's backing device's read_ahead_kb in
// sysfs (Documentation/ABI/testing/sysfs-class-bdi), which only root may
// write; otherwise the default stays.
func raiseReadahead(mountpoint string, size int) {
	// From what the kernel has: the daemon must send its own mount no
	// request it might die waiting for.
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, mountpoint, unix.AT_STATX_DONT_SYNC, 0, &stx); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", stx.Dev_major, stx.Dev_minor)
	_ = os.WriteFile(p, []byte(strconv.Itoa(size>>10)), 0)
}

// Server is a mounted stack.
type Server struct {
	tr         *transport
	mountpoint string
	root       *Node
}

// Wait returns once the mount is gone: unmounted by anyone, or its
// connection aborted.
func (s *Server) Wait() { s.tr.wait() }

// Unmount unmounts the mount and waits until its requests are served.
func (s *Server) Unmount() error {
	if err := unmountSoon(s.mountpoint); err != nil {
		return err
	}
	s.Wait()
	return nil
}

// Commit freezes the upper into a new lower layer while the mount stays in
// use (cow.Stack.Commit). The merged view does not change, so the kernel's
// caches stay valid, but every node looks its object up again: an object
// found before the commit may not know the new lower. The hard links the
// link index served now lead to different objects: the kernel drops what
// it cached of them and looks their names up again.
func (s *Server) Commit() (cow.Committed, error) {
	st := s.root.st
	release := st.Hold()
	_, err := st.MaterializeIndex()
	release()
	if err != nil {
		return cow.Committed{}, fmt.Errorf("commit: %w", err)
	}
	c, err := st.Commit(s.liveFiles)
	if err != nil {
		return c, err
	}
	release = st.Hold()
	if root, err := st.Root(); err == nil {
		s.root.setObject(root)
	}
	release()
	unlinked := map[uint64]bool{}
	for _, ino := range c.Unlinked {
		unlinked[ino] = true
	}
	type name struct {
		dir  *fusefs.Inode
		name string
	}
	var names []name
	var stale []*Node
	var walk func(dir *fusefs.Inode)
	walk = func(dir *fusefs.Inode) {
		for n, ch := range dir.Children() {
			node := ch.Operations().(*Node)
			node.invalidate()
			if unlinked[ch.StableAttr().Ino] && !ch.IsDir() {
				names = append(names, name{dir, n})
				stale = append(stale, node)
			}
			if ch.IsDir() {
				walk(ch)
			}
		}
	}
	walk(s.root.EmbeddedInode())
	for _, n := range stale {
		n.NotifyContent(0, 0)
	}
	for _, nm := range names {
		nm.dir.NotifyEntry(nm.name)
	}
	return c, nil
}
