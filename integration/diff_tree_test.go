package integration

import (
	"bytes"
	"crypto/sha256"
	enc "encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// This file snapshots a directory tree (a merged mount or an upper left
// behind) into a comparable form, and diffs two snapshots.

// obj is what a snapshot records about one path.
type obj struct {
	typ    string // dir, reg, lnk, fifo, chr, blk, sock, whiteout
	perm   uint32 // mode & 07777
	uid    uint32
	gid    uint32
	size   int64  // not for directories
	nlink  uint64 // not for directories
	rdev   uint64
	data   string // content summary for regular files
	target string // symlink target
	xattrs string // sorted name=value list
	opaque string // trusted.overlay.opaque value (raw layers only)
	mtime  string // "old <time>" for fixture times, "new" for anything the test wrote
	blocks int64  // allocated 512-byte blocks of a large file (raw layers only)
	dtype  string // type from the parent's readdir
	dinoOK bool   // d_ino from readdir equals st_ino
	ino    uint64
}

// snapshot is a tree: relative path ("" is the root) to object.
type snapshot map[string]*obj

// snapMode selects how a tree is read.
type snapMode int

const (
	// snapMerged reads a mount point: every xattr the mount lists counts.
	snapMerged snapMode = iota
	// snapForeign reads a kernel mount of an upper unionmount wrote: as
	// snapMerged, but unionmount's private trusted.unionmount.* xattrs,
	// which the kernel shows, are left out.
	snapForeign
	// snapRaw reads a layer directory: whiteouts and opaque markers are
	// recorded as such, and the union's own xattrs are ignored.
	snapRaw
)

// takeSnapshot walks root.
func takeSnapshot(root string, mode snapMode) (snapshot, error) {
	s := snapshot{}
	o, err := statObj(root, mode)
	if err != nil {
		return nil, err
	}
	o.dtype, o.dinoOK = "dir", true
	s[""] = o
	if err := walkDir(root, "", mode, s); err != nil {
		return nil, err
	}
	return s, nil
}

func walkDir(root, rel string, mode snapMode, s snapshot) error {
	ents, err := readDirents(filepath.Join(root, rel))
	if err != nil {
		return fmt.Errorf("readdir %q: %w", rel, err)
	}
	for _, de := range ents {
		p := path.Join(rel, de.name)
		o, err := statObj(filepath.Join(root, p), mode)
		if err != nil {
			return fmt.Errorf("%q: %w", p, err)
		}
		o.dtype = de.typ
		o.dinoOK = de.ino == o.ino
		s[p] = o
		if o.typ == "dir" {
			if err := walkDir(root, p, mode, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// dirent is one entry returned by getdents64.
type dirent struct {
	name string
	typ  string
	ino  uint64
}

// readDirents lists dir with getdents64, keeping d_ino and d_type, sorted
// by name and without . and ..
func readDirents(dir string) ([]dirent, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []dirent
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			break
		}
		for b := buf[:n]; len(b) > 0; {
			ino := enc.NativeEndian.Uint64(b[0:8])
			reclen := enc.NativeEndian.Uint16(b[16:18])
			typ := b[18]
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			b = b[reclen:]
			if string(name) == "." || string(name) == ".." {
				continue
			}
			out = append(out, dirent{name: string(name), typ: dtypeName(typ), ino: ino})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

func dtypeName(t uint8) string {
	switch t {
	case unix.DT_DIR:
		return "dir"
	case unix.DT_REG:
		return "reg"
	case unix.DT_LNK:
		return "lnk"
	case unix.DT_FIFO:
		return "fifo"
	case unix.DT_CHR:
		return "chr"
	case unix.DT_BLK:
		return "blk"
	case unix.DT_SOCK:
		return "sock"
	case unix.DT_UNKNOWN:
		return "unknown"
	}
	return fmt.Sprintf("dtype%d", t)
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFREG:
		return "reg"
	case unix.S_IFLNK:
		return "lnk"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFCHR:
		return "chr"
	case unix.S_IFBLK:
		return "blk"
	case unix.S_IFSOCK:
		return "sock"
	}
	return fmt.Sprintf("mode%o", mode&unix.S_IFMT)
}

// statObj records one path.
func statObj(p string, mode snapMode) (*obj, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, fmt.Errorf("lstat: %w", err)
	}
	o := &obj{
		typ:  typeName(st.Mode),
		perm: st.Mode & 07777,
		uid:  st.Uid,
		gid:  st.Gid,
		rdev: st.Rdev,
		ino:  st.Ino,
	}
	if mode == snapRaw && o.typ == "chr" && st.Rdev == 0 {
		// A whiteout: its mode, owner and link count are the
		// implementation's business (the kernel shares one inode).
		return &obj{typ: "whiteout", ino: st.Ino}, nil
	}
	if o.typ != "dir" {
		o.size = st.Size
		o.nlink = uint64(st.Nlink)
	}
	mt := st.Mtim.Nano()
	if mt < fixtureEpoch.Add(24*3600*1e9).UnixNano() {
		o.mtime = "old " + fmt.Sprint(mt)
	} else {
		o.mtime = "new"
	}
	switch o.typ {
	case "reg":
		d, err := contentSummary(p)
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
		o.data = d
		if mode == snapRaw && st.Size >= 1<<20 {
			o.blocks = st.Blocks
		}
	case "lnk":
		t, err := os.Readlink(p)
		if err != nil {
			return nil, err
		}
		o.target = t
	}
	xs, op, err := readXattrs(p, mode)
	if err != nil {
		return nil, fmt.Errorf("xattrs: %w", err)
	}
	o.xattrs, o.opaque = xs, op
	return o, nil
}

// contentSummary is a file's content when short, otherwise its size and
// a hash.
func contentSummary(p string) (string, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	var head bytes.Buffer
	n, err := io.Copy(io.MultiWriter(h, &limitWriter{w: &head, n: 48}), f)
	if err != nil {
		return "", err
	}
	if n <= 48 {
		return fmt.Sprintf("%q", head.String()), nil
	}
	return fmt.Sprintf("%d bytes %q... sha256 %x", n, head.String()[:24], h.Sum(nil)[:8]), nil
}

type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(l.n, len(p))
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// readXattrs lists p's xattrs as "name=value" lines. On raw layers the
// overlay and unionmount private xattrs are left out, except the opaque
// marker, which is returned separately.
func readXattrs(p string, mode snapMode) (string, string, error) {
	names, err := listXattr(p)
	if err != nil {
		return "", "", err
	}
	var out []string
	opaque := ""
	for _, n := range names {
		v, err := getXattr(p, n)
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", n, err)
		}
		if mode == snapRaw {
			if n == "trusted.overlay.opaque" {
				opaque = v
				continue
			}
			// trusted.overlay.overlay.* is a user's trusted.overlay.*
			// xattr, escaped; the rest is the union's own.
			private := strings.HasPrefix(n, "trusted.overlay.") && !strings.HasPrefix(n, "trusted.overlay.overlay.")
			if private || strings.HasPrefix(n, "trusted.unionmount.") {
				continue
			}
		}
		if mode == snapForeign && strings.HasPrefix(n, "trusted.unionmount.") {
			continue
		}
		out = append(out, fmt.Sprintf("%s=%q", n, v))
	}
	sort.Strings(out)
	return strings.Join(out, " "), opaque, nil
}

func listXattr(p string) ([]string, error) {
	for size := 1024; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Llistxattr(p, buf)
		if err == unix.ERANGE {
			continue
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		sort.Strings(names)
		return names, nil
	}
}

func getXattr(p, name string) (string, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(p, name, buf)
		if err == unix.ERANGE {
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

// cmpOpts selects what diffSnapshots compares.
type cmpOpts struct {
	ino bool // compare which paths share an inode number
	// noDino skips the d_ino check, for when got is a kernel mount.
	noDino bool
	// noNlink skips link counts, for when the kernel side was brought
	// level with cp -a, which cannot keep links to outside what it copies.
	noNlink bool
}

// diffSnapshots lists the differences of got from want, one line each, in
// the form "path: field: got X, want Y (wantName)".
func diffSnapshots(got, want snapshot, wantName string, o cmpOpts) []string {
	var diffs []string
	for _, p := range unionKeys(got, want) {
		g, w := got[p], want[p]
		disp := p
		if disp == "" {
			disp = "/"
		}
		switch {
		case g == nil:
			diffs = append(diffs, fmt.Sprintf("%s: missing, want %s (%s)", disp, w.describe(), wantName))
			continue
		case w == nil:
			diffs = append(diffs, fmt.Sprintf("%s: got %s, want absent (%s)", disp, g.describe(), wantName))
			continue
		}
		for _, f := range objFields(g, w, o) {
			diffs = append(diffs, fmt.Sprintf("%s: %s: got %s, want %s (%s)", disp, f[0], f[1], f[2], wantName))
		}
	}
	if o.ino && !ignored("ino", "") {
		gi, wi := inoClasses(got), inoClasses(want)
		for _, p := range unionKeys(got, want) {
			if got[p] == nil || want[p] == nil || gi[p] == wi[p] {
				continue
			}
			diffs = append(diffs, fmt.Sprintf("%s: inode shared with: got %q, want %q (%s)", p, gi[p], wi[p], wantName))
		}
	}
	return diffs
}

var diffIgnore = flag.String("diff.ignore", "",
	`comma-separated fields the differential tests do not compare, to look past a known difference: mtime, dirmtime (directories only), atime (in utimes results), ino (inode sharing and stability), mode, xattrs, opaque, nlink, ...`)

// ignored reports whether -diff.ignore names field (for an object of type typ).
func ignored(field, typ string) bool {
	for _, f := range strings.Split(*diffIgnore, ",") {
		if f == field || (f == "dirmtime" && field == "mtime" && typ == "dir") {
			return true
		}
	}
	return false
}

// objFields returns the fields in which g and w differ as {name, got, want}.
func objFields(g, w *obj, o cmpOpts) [][3]string {
	var out [][3]string
	add := func(name string, gv, wv any) {
		gs, ws := fmt.Sprint(gv), fmt.Sprint(wv)
		if gs != ws && !ignored(name, w.typ) {
			out = append(out, [3]string{name, gs, ws})
		}
	}
	add("type", g.typ, w.typ)
	if g.typ != w.typ {
		return out
	}
	add("mode", fmt.Sprintf("%04o", g.perm), fmt.Sprintf("%04o", w.perm))
	add("uid", g.uid, w.uid)
	add("gid", g.gid, w.gid)
	add("size", g.size, w.size)
	if !o.noNlink {
		add("nlink", g.nlink, w.nlink)
	}
	add("rdev", g.rdev, w.rdev)
	add("content", g.data, w.data)
	add("target", g.target, w.target)
	add("xattrs", "["+g.xattrs+"]", "["+w.xattrs+"]")
	add("opaque", fmt.Sprintf("%q", g.opaque), fmt.Sprintf("%q", w.opaque))
	add("mtime", g.mtime, w.mtime)
	// Holes: at least as sparse as the kernel's copy (which fills the
	// rest of each 1 MiB chunk it copies).
	if g.blocks > w.blocks {
		add("allocated blocks", g.blocks, fmt.Sprintf("<= %d", w.blocks))
	}
	add("d_type", g.dtype, w.dtype)
	// The kernel's d_ino differs from st_ino for a merged directory whose
	// upper has no origin xattr; the union may do better, not worse.
	if !g.dinoOK && w.dinoOK && !o.noDino {
		add("d_ino==st_ino", g.dinoOK, w.dinoOK)
	}
	return out
}

func (o *obj) describe() string {
	switch o.typ {
	case "reg":
		return fmt.Sprintf("reg %04o %s", o.perm, o.data)
	case "lnk":
		return "lnk -> " + o.target
	case "dir":
		if o.opaque != "" {
			return "dir (opaque)"
		}
		return fmt.Sprintf("dir %04o", o.perm)
	}
	return o.typ
}

// inoClasses maps each path to the first path (in sorted order) with the
// same inode number, or "" when its inode is its own. Whiteouts are left
// out: the kernel makes them links of one inode.
func inoClasses(s snapshot) map[string]string {
	first := map[uint64]string{}
	out := map[string]string{}
	for _, p := range sortedKeys(s) {
		o := s[p]
		if o.typ == "whiteout" {
			continue
		}
		if f, ok := first[o.ino]; ok {
			out[p] = f
		} else {
			first[o.ino] = p
		}
	}
	return out
}

// inoChanges lists the paths whose inode number differs between before
// and after, for objects of the same type.
func inoChanges(before, after snapshot) []string {
	var out []string
	for _, p := range sortedKeys(after) {
		b, a := before[p], after[p]
		if b != nil && b.typ == a.typ && b.ino != a.ino {
			out = append(out, p)
		}
	}
	return out
}

func sortedKeys(s snapshot) []string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func unionKeys(a, b snapshot) []string {
	seen := map[string]bool{}
	for k := range a {
		seen[k] = true
	}
	for k := range b {
		seen[k] = true
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
