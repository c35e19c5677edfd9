package cow

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Commit freezes the upper into a new read-only layer while the stack stays
// in use: the upper's tree becomes the top-most lower and an empty upper
// takes its place.
//
// # On disk
//
// Committed layers live in WORK/layers, named 1, 2, 3, ... in commit
// order; Open stacks them, newest on top, between the upper and
// Config.Lowers, so a remount with the same directories shows the same
// merged view. Each is an ordinary layer directory in the overlay format:
// a kernel mount with lowerdir=WORK/layers/N:...:LOWERS shows the same view
// too.
//
// The switch is one renameat2(RENAME_EXCHANGE) of the upper with a fresh
// empty directory prepared as WORK/layers/N: before it the stack has an
// empty extra layer, after it the committed one, and a crash at any point
// leaves one of the two. No file is copied; the time writers wait does not
// depend on the size of the upper.
//
// # Objects and inode numbers
//
// The Layer that was the upper becomes the new lower in place, so Objects
// found before the commit stay valid: they now describe objects in a lower,
// and changing one copies it up again. The layer keeps its inode numbers,
// and inode numbers recorded at copy-up are read in committed layers too,
// so st_ino does not change.
//
// The link index (linkindex.go) cannot be carried into a layer: a layer
// cannot hold a hard link into the layers below it (image-spec layer.md,
// "Hardlinks"). MaterializeIndex, run before Commit, links the lower names
// the index serves into the upper, so that the layer holds every name of
// such a file. Commit empties the index; a name it still served (one that
// appeared meanwhile) shows the lower's data again, as a kernel mount of the committed
// layers with index=off does, while the copied-up names keep their data
// under an inode number of their own; Commit reports the inode numbers
// concerned.

const committedDir = "layers"

// Hold keeps the stack's set of layers as it is until release is called:
// Commit waits until no hold is left, and new holds wait for a commit to
// finish. The FUSE server holds the stack for each request that reads or
// changes it; a hold must not be taken twice by one request.
func (s *Stack) Hold() (release func()) {
	s.live.RLock()
	return s.live.RUnlock
}

// Generation counts the commits of this stack; a descriptor opened in the
// upper before a commit is in a lower after it.
func (s *Stack) Generation() uint64 { return s.gen.Load() }

// Committed describes a commit.
type Committed struct {
	// Dir is the new layer's directory, WORK/layers/N.
	Dir string
	// Lowers are the layers below it, top-most first.
	Lowers []string
	// Held is how long the commit held the stack.
	Held time.Duration
	// Unlinked are the inode numbers of objects that were served from the
	// link index and now show their lower data again.
	Unlinked []uint64
}

// Commit freezes the upper into a new lower layer, on top of the others,
// and continues with an empty upper. It waits for every Hold to be
// released and holds the stack exclusively while it works.
//
// live, when not nil, is called under that hold and names the files that
// are written behind the stack's back (the kernel writes files open
// through FUSE passthrough itself): each stays in the upper, as the same
// file, and the layer gets a copy of it as it is at that moment. They are
// copied while writers wait, and must have one link.
func (s *Stack) Commit(live func() []string) (Committed, error) {
	if s.upper == nil {
		return Committed{}, &errRO
	}
	start := time.Now()
	s.live.Lock()
	defer s.live.Unlock()
	if len(s.lowers)+1 > MaxLowers {
		return Committed{}, fmt.Errorf("commit: the stack has %d lower layers, at most %d allowed: %w", len(s.lowers), MaxLowers, unix.EINVAL)
	}
	var keep []string
	if live != nil {
		keep = live()
	}
	// The copies of the live files are made first, so that a full disk
	// fails the commit before it changes anything.
	copies, err := s.copyLive(keep)
	if err != nil {
		return Committed{}, fmt.Errorf("commit: %w", err)
	}
	defer func() {
		for _, tmp := range copies {
			removeAll(s.work, tmp)
		}
	}()
	layersDir := filepath.Join(s.cfg.Work, committedDir)
	if err := os.Mkdir(layersDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return Committed{}, fmt.Errorf("commit: %w", err)
	}
	seq, err := nextCommitted(layersDir)
	if err != nil {
		return Committed{}, fmt.Errorf("commit: %w", err)
	}
	name := strconv.Itoa(seq)
	dir := filepath.Join(layersDir, name)
	if err := s.prepareFresh(dir); err != nil {
		return Committed{}, fmt.Errorf("commit: %w", err)
	}
	if err := exchangeDirs(dir, s.cfg.Upper); err != nil {
		_ = os.Remove(dir)
		return Committed{}, fmt.Errorf("commit: swap %s with a fresh upper: %w", s.cfg.Upper, err)
	}
	// From here the commit has happened on disk; what follows makes the
	// open stack match it.
	fresh, err := openLayer(s.cfg.Upper, true)
	if err != nil {
		return Committed{}, fmt.Errorf("commit: reopen the upper: %w", err)
	}
	old := s.upper
	fresh.inoHigh = old.inoHigh
	old.Dir, old.upper, old.committed = dir, false, true
	s.upper = fresh
	s.lowers = append([]*Layer{old}, s.lowers...)
	s.gen.Add(1)
	unlinked, err := s.emptyIndex()
	if err != nil {
		return Committed{}, fmt.Errorf("commit: %w", err)
	}
	for i, rel := range keep {
		if err := s.keepInUpper(old, rel, copies[i]); err != nil {
			return Committed{}, fmt.Errorf("commit: keep %s in the upper: %w", rel, err)
		}
	}
	c := Committed{Dir: dir, Unlinked: unlinked}
	for _, l := range s.lowers[1:] {
		c.Lowers = append(c.Lowers, l.Dir)
	}
	c.Held = time.Since(start)
	return c, nil
}

// copyLive copies each live file, at rel in the upper, into the work
// directory, with its data, xattrs, owner, mode and times, and returns the
// copies' names. A live file must be a regular file with one link.
func (s *Stack) copyLive(keep []string) ([]string, error) {
	var copies []string
	for _, rel := range keep {
		st, err := s.upper.lstat(rel)
		if err == nil && (st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1) {
			err = fmt.Errorf("%s is open for writing and has %d links; close it and commit again: %w", rel, st.Nlink, unix.EBUSY)
		}
		if err == nil {
			tmp := s.tmpName()
			o := &Object{Layer: s.upper, Mode: st.Mode, Ino: s.ino(s.upper, rel, &st)}
			copies = append(copies, tmp)
			if err = s.buildCopy(o, rel, &st, tmp, copyWithData); err != nil {
				err = fmt.Errorf("copy %s: %w", rel, err)
			}
		}
		if err != nil {
			for _, tmp := range copies {
				removeAll(s.work, tmp)
			}
			return nil, err
		}
	}
	return copies, nil
}

// keepInUpper puts the file rel of the layer just committed, l, back into
// the upper, and its copy tmp (copyLive) into l in its place: the copy goes
// into the upper, and the two exchange places in one
// renameat2(RENAME_EXCHANGE), so that l always holds one of the two. No
// directory's times move.
func (s *Stack) keepInUpper(l *Layer, rel, tmp string) error {
	if err := s.copyUpParents(rel); err != nil {
		return err
	}
	if err := s.placeCopy(tmp, rel); err != nil {
		return err
	}
	dir, _ := split(rel)
	lst, err := l.lstat(dir)
	if err != nil {
		return err
	}
	ust, err := s.upper.lstat(dir)
	if err != nil {
		return err
	}
	err = s.upper.in(rel, func(ud int, un string) error {
		return l.in(rel, func(ld int, ln string) error { return renameat2(ud, un, ld, ln, unix.RENAME_EXCHANGE) })
	})
	if err != nil {
		return err
	}
	if err := l.setTimes(dir, []unix.Timespec{lst.Atim, lst.Mtim}); err != nil {
		return err
	}
	return s.upper.setTimes(dir, []unix.Timespec{ust.Atim, ust.Mtim})
}

// prepareFresh builds the empty directory that becomes the upper: a copy
// of the upper's root directory without its contents, so that the merged
// root keeps its attributes and inode number.
func (s *Stack) prepareFresh(dir string) error {
	st, err := s.upper.lstat("")
	if err != nil {
		return err
	}
	root := &Object{Layer: s.upper, Mode: st.Mode, Ino: s.ino(s.upper, "", &st)}
	tmp := s.tmpName()
	if err := s.buildCopy(root, "", &st, tmp, copyNoData); err != nil {
		removeAll(s.work, tmp)
		return fmt.Errorf("prepare a fresh upper: %w", err)
	}
	if err := os.Rename(filepath.Join(s.work.Dir, tmp), dir); err != nil {
		removeAll(s.work, tmp)
		return fmt.Errorf("prepare a fresh upper: %w", err)
	}
	return syncDir(filepath.Dir(dir))
}

// exchangeDirs swaps the directories a and b atomically and makes the swap
// durable.
func exchangeDirs(a, b string) error {
	err := renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%w (the upper is a mount point; commit needs to rename it)", err)
	}
	if err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(a)); err != nil {
		return err
	}
	return syncDir(filepath.Dir(b))
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return &os.PathError{Op: "fsync", Path: dir, Err: err}
	}
	return nil
}

// emptyIndex removes every entry of the link index and returns their inode
// numbers. The copy each entry names stays in the committed layer, where
// it now stands for itself only: it gets its own inode number, so that it
// and the lower names it no longer shows are told apart.
func (s *Stack) emptyIndex() ([]uint64, error) {
	if s.index == nil {
		return nil, nil
	}
	names, err := readNames(s.index, "")
	if err != nil {
		return nil, err
	}
	var inos []uint64
	for _, n := range names {
		if s.lowerLinks(n) == 0 {
			// Every name is in the upper: nothing changes for it.
			if err := removeAll(s.index, n); err != nil {
				return inos, err
			}
			continue
		}
		if st, err := s.index.lstat(n); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			own := strconv.FormatUint(st.Ino|s.upper.inoHigh, 10)
			if err := s.index.setxattr(n, s.inoXattr(), []byte(own)); err != nil && !ignorableXattrErr(err) {
				return inos, err
			}
		}
		if err := removeAll(s.index, n); err != nil {
			return inos, err
		}
		if ino, err := strconv.ParseUint(n, 10, 64); err == nil {
			inos = append(inos, ino)
		}
	}
	return inos, nil
}

// committedLayers returns the committed layer directories in work, newest
// first.
func committedLayers(work string) ([]string, error) {
	seqs, err := committedSeqs(filepath.Join(work, committedDir))
	if err != nil {
		return nil, err
	}
	dirs := make([]string, len(seqs))
	for i, n := range seqs {
		dirs[len(seqs)-1-i] = filepath.Join(work, committedDir, strconv.Itoa(n))
	}
	return dirs, nil
}

// committedSeqs returns the numbers of the committed layers in dir, in
// ascending order. Other names (a layer's metadata) are not layers.
func committedSeqs(dir string) ([]int, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list committed layers: %w", err)
	}
	var seqs []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil || n <= 0 || strconv.Itoa(n) != e.Name() || !e.IsDir() {
			continue
		}
		seqs = append(seqs, n)
	}
	slices.Sort(seqs)
	return seqs, nil
}

func nextCommitted(dir string) (int, error) {
	seqs, err := committedSeqs(dir)
	if err != nil || len(seqs) == 0 {
		return 1, err
	}
	return seqs[len(seqs)-1] + 1, nil
}

// Detach returns a new descriptor, open for reading and writing, of a
// private copy of the file open as fd, in the work directory and without a
// name: for an open file that has no name in the merged view any more and
// whose data a commit froze into a lower, so that writes to it never change
// the committed layer.
func (s *Stack) Detach(fd int) (int, error) {
	if s.upper == nil {
		return -1, &errRO
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return -1, fmt.Errorf("detach: %w", err)
	}
	c, err := unix.Openat(s.work.fd, ".", unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, st.Mode&0o7777)
	if err != nil {
		return -1, fmt.Errorf("detach: %w", err)
	}
	// fd may be open for writing only.
	in, err := unix.Open(procPath(fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		err = copyData(c, in, st.Size, false)
		unix.Close(in)
	}
	if err != nil {
		unix.Close(c)
		return -1, fmt.Errorf("detach: %w", err)
	}
	return c, nil
}
