package cow

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// A lower file with several names is copied up once: the copy gets a name
// in the link index (WORK/linkindex/INO) besides the name it was copied up
// by, and every other lower name of it is served from the index until it is
// itself copied up ("materialized": linked into the upper), removed or
// replaced. The copy carries the count of such lower names, so st_nlink
// stays right.

// indexName returns the link index name of the object with merged inode
// number ino.
func indexName(ino uint64) string { return strconv.FormatUint(ino, 10) }

// indexed returns the object for a non-directory with several names, st at
// l, and the attributes of its copy, when the link index holds one; the
// bool is false otherwise.
func (s *Stack) indexed(l *Layer, st *unix.Stat_t, ino uint64) (*Object, unix.Stat_t, bool) {
	if s.index == nil || st.Nlink < 2 || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil, unix.Stat_t{}, false
	}
	name := indexName(ino)
	ist, err := s.index.lstat(name)
	if err != nil {
		return nil, ist, false
	}
	if l.upper && (ist.Ino != st.Ino || ist.Dev != st.Dev) {
		return nil, ist, false // an unrelated upper file
	}
	o := &Object{Layer: s.index, indexName: name, Ino: ino, Mode: ist.Mode}
	if !l.upper {
		o.Lowers = []*Layer{l}
	}
	return o, ist, true
}

// loc returns the path of o in o.Layer, o being at rel in the merged view.
func (o *Object) loc(rel string) string {
	if o.indexName != "" {
		return o.indexName
	}
	return rel
}

// lowerLinks returns the number of lower names that show the indexed copy.
func (s *Stack) lowerLinks(name string) int64 {
	v, err := s.index.getxattr(name, s.lowerLinksXattr())
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(string(v), 10, 64)
	return n
}

// addLowerLinks adds d to the lower name count of the indexed copy name.
//
// Preconditions: s.ns is held.
func (s *Stack) addLowerLinks(name string, d int64) error {
	n := max(s.lowerLinks(name)+d, 0)
	return s.index.setxattr(name, s.lowerLinksXattr(), []byte(strconv.FormatInt(n, 10)))
}

// materialize links the indexed copy o into the upper at rel, unless it is
// there already.
func (s *Stack) materialize(o *Object, rel string) (*Object, error) {
	if err := s.copyUpParents(rel); err != nil {
		return nil, err
	}
	s.ns.Lock()
	defer s.ns.Unlock()
	ist, err := s.index.lstat(o.indexName)
	if err != nil {
		return nil, err
	}
	if st, err := s.upper.lstat(rel); err == nil && st.Ino == ist.Ino {
		return o, nil
	}
	tmp := s.tmpName()
	if err := unix.Linkat(s.index.fd, o.indexName, s.work.fd, tmp, 0); err != nil {
		return nil, s.index.err("link", o.indexName, err)
	}
	dir, _ := split(rel)
	pst, perr := s.upper.lstat(dir)
	if err := s.intoUpper(tmp, rel, 0); err != nil {
		unix.Unlinkat(s.work.fd, tmp, 0)
		return nil, s.upper.err("rename", rel, err)
	}
	if perr == nil {
		_ = s.upper.setTimes(dir, []unix.Timespec{pst.Atim, pst.Mtim}) // best effort
	}
	return o, s.addLowerLinks(o.indexName, -1)
}

// indexCopy enters the copy tmp (in the work directory) of the lower object
// o, which has nlink names, into the link index.
func (s *Stack) indexCopy(o *Object, tmp string, nlink uint64) error {
	if err := s.work.setxattr(tmp, s.lowerLinksXattr(), []byte(strconv.FormatUint(nlink-1, 10))); err != nil {
		return err
	}
	err := unix.Linkat(s.work.fd, tmp, s.index.fd, indexName(o.Ino), 0)
	if errors.Is(err, unix.EEXIST) {
		// Left by a copy-up that a crash interrupted before its
		// rename; this one replaces it.
		unix.Unlinkat(s.index.fd, indexName(o.Ino), 0)
		err = unix.Linkat(s.work.fd, tmp, s.index.fd, indexName(o.Ino), 0)
	}
	if err != nil {
		return s.index.err("link", indexName(o.Ino), err)
	}
	return nil
}

// copyUpLinked copies up o, at rel, before one of its names disappears
// from the merged view, when o is a lower file with several names that is
// not in the link index yet; so the index counts its names right (the
// kernel does the same with index=on).
func (s *Stack) copyUpLinked(o *Object, rel string) error {
	if o == nil || o.IsDir() || o.Layer.upper || s.index == nil {
		return nil
	}
	st, err := o.Layer.lstat(rel)
	if err != nil || st.Nlink < 2 {
		return err
	}
	_, err = s.CopyUp(o, rel, true)
	return err
}

// nlink returns the link count the merged view shows for the indexed copy
// whose index entry has st: its upper names plus its lower names.
func (s *Stack) nlink(o *Object, st *unix.Stat_t) uint64 {
	return uint64(max(int64(st.Nlink)-1+s.lowerLinks(o.indexName), 0))
}

// MaterializeIndex links into the upper every lower name that the link
// index still serves, so that the upper alone holds all the names of each
// copied-up hard link: a commit then keeps the link, and its layer carries
// every name as a hard link (as containerd's differ re-emits the unchanged
// names of a changed inode). Only the names' (dev, inode) tell which they
// are, so it walks the lowers, once, and only when the index serves some
// name. It returns how many names it linked.
func (s *Stack) MaterializeIndex() (int, error) {
	if s.index == nil {
		return 0, nil
	}
	names, err := readNames(s.index, "")
	if err != nil {
		return 0, err
	}
	want := map[uint64]bool{}
	for _, n := range names {
		if ino, err := strconv.ParseUint(n, 10, 64); err == nil && s.lowerLinks(n) > 0 {
			want[ino] = true
		}
	}
	if len(want) == 0 {
		return 0, nil
	}
	var found []string
	for _, l := range s.lowers {
		if err := s.findLinked(l, "", want, &found); err != nil {
			return 0, err
		}
	}
	n := 0
	for _, rel := range found {
		o, err := s.lookupPath(rel)
		if err != nil || o.indexName == "" {
			continue // hidden, or not shown from the index
		}
		if st, err := s.upper.lstat(rel); err == nil && !isWhiteout(&st) {
			continue // in the upper already
		}
		if _, err := s.materialize(o, rel); err != nil {
			return n, fmt.Errorf("link %s into the upper: %w", rel, err)
		}
		n++
	}
	return n, nil
}

// findLinked appends to found the paths below rel in l of the files with
// several names whose merged inode number is in want.
func (s *Stack) findLinked(l *Layer, rel string, want map[uint64]bool, found *[]string) error {
	ents, err := readDirents(l, rel, unix.O_NOATIME)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := join(rel, e.name)
		switch e.typ {
		case unix.DT_DIR:
			if err := s.findLinked(l, p, want, found); err != nil {
				return err
			}
		case unix.DT_REG, unix.DT_UNKNOWN:
			if !want[e.ino|l.inoHigh] {
				continue
			}
			if st, err := l.lstat(p); err == nil && st.Nlink > 1 && st.Mode&unix.S_IFMT == unix.S_IFREG {
				*found = append(*found, p)
			}
		}
	}
	return nil
}
