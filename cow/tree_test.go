package cow

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// This file holds the test fixtures: declarative layer trees, a builder,
// dumps of a layer and of the merged view, and a test stack whose lowers
// are checked to be unchanged when the test ends.

type kind int

const (
	kindFile      kind = iota
	kindDir            // a directory
	kindSymlink        // Content is the target
	kindFifo           // a named pipe
	kindChar           // a character device with Rdev
	kindWhiteout       // a 0/0 character device
	kindOpaqueDir      // a directory with the opaque xattr Content (trusted.overlay.opaque if empty) set to "y"
	kindOpqMarker      // a directory with a ".wh..wh..opq" file inside
	kindMarker         // a ".wh.NAME" file next to where NAME (path) would be
	kindHardlink       // another name for the file at Content
)

// entry is one object of a layer tree.
type entry struct {
	Path    string
	Kind    kind
	Content string // file data, symlink or hard link target, opaque xattr name
	Mode    uint32 // permission bits; 0 means 0644 for files, 0755 for directories
	Rdev    uint64
	Xattrs  map[string]string
}

func file(p, content string) entry        { return entry{Path: p, Kind: kindFile, Content: content} }
func dir(p string) entry                  { return entry{Path: p, Kind: kindDir} }
func symlink(p, target string) entry      { return entry{Path: p, Kind: kindSymlink, Content: target} }
func fifo(p string) entry                 { return entry{Path: p, Kind: kindFifo} }
func chardev(p string, rdev uint64) entry { return entry{Path: p, Kind: kindChar, Rdev: rdev} }
func whiteout(p string) entry             { return entry{Path: p, Kind: kindWhiteout} }
func opaque(p string) entry               { return entry{Path: p, Kind: kindOpaqueDir} }
func opaqueX(p, x string) entry           { return entry{Path: p, Kind: kindOpaqueDir, Content: x} }
func opqMarker(p string) entry            { return entry{Path: p, Kind: kindOpqMarker} }
func marker(p string) entry               { return entry{Path: p, Kind: kindMarker} }
func hardlink(p, target string) entry     { return entry{Path: p, Kind: kindHardlink, Content: target} }

func (e entry) withMode(m uint32) entry { e.Mode = m; return e }

func (e entry) withXattr(name, val string) entry {
	x := map[string]string{name: val}
	for k, v := range e.Xattrs {
		x[k] = v
	}
	e.Xattrs = x
	return e
}

// needsRoot reports whether building e takes root.
func (e entry) needsRoot() bool {
	switch e.Kind {
	case kindWhiteout, kindChar:
		return true
	case kindOpaqueDir:
		return e.Content == "" || strings.HasPrefix(e.Content, "trusted.")
	}
	for k := range e.Xattrs {
		if strings.HasPrefix(k, "trusted.") {
			return true
		}
	}
	return false
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mknod of devices and whiteouts, chown, trusted.* xattrs")
	}
}

// buildTree creates the entries under root, parents as needed (0755).
func buildTree(t *testing.T, root string, entries []entry) {
	t.Helper()
	for _, e := range entries {
		if e.needsRoot() {
			requireRoot(t)
		}
		p := filepath.Join(root, e.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch e.Kind {
		case kindFile:
			err = os.WriteFile(p, []byte(e.Content), 0o644)
		case kindDir, kindOpaqueDir, kindOpqMarker:
			err = os.Mkdir(p, 0o755)
			if errors.Is(err, os.ErrExist) {
				err = nil
			}
			if err == nil && e.Kind == kindOpaqueDir {
				x := e.Content
				if x == "" {
					x = "trusted.overlay.opaque"
				}
				err = unix.Setxattr(p, x, []byte("y"), 0)
			}
			if err == nil && e.Kind == kindOpqMarker {
				err = os.WriteFile(filepath.Join(p, opaqueMarker), nil, 0o644)
			}
		case kindSymlink:
			err = os.Symlink(e.Content, p)
		case kindFifo:
			err = unix.Mkfifo(p, 0o644)
		case kindChar:
			err = unix.Mknod(p, unix.S_IFCHR|0o644, int(e.Rdev))
		case kindWhiteout:
			err = unix.Mknod(p, unix.S_IFCHR, 0)
		case kindMarker:
			err = os.WriteFile(filepath.Join(filepath.Dir(p), whiteoutPrefix+filepath.Base(p)), nil, 0o644)
		case kindHardlink:
			err = os.Link(filepath.Join(root, e.Content), p)
		}
		if err != nil {
			t.Fatalf("build %s: %v", e.Path, err)
		}
		for k, v := range e.Xattrs {
			if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
				t.Fatalf("build %s: xattr %s: %v", e.Path, k, err)
			}
		}
		// Modes are set explicitly, so that the umask does not matter.
		mode := e.Mode
		switch {
		case e.Kind == kindSymlink || e.Kind == kindHardlink || e.Kind == kindWhiteout:
			continue
		case e.Kind == kindMarker:
			p = filepath.Join(filepath.Dir(p), whiteoutPrefix+filepath.Base(p))
			mode = 0o644
		case mode != 0:
		case e.Kind == kindDir || e.Kind == kindOpaqueDir || e.Kind == kindOpqMarker:
			mode = 0o755
		default:
			mode = 0o644
		}
		if err := unix.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// describe returns a one-line description of the object st at p: type,
// permissions, owner, data or target, and xattrs (without the union's own
// unless private).
func describe(t *testing.T, p string, st *unix.Stat_t, private bool) string {
	t.Helper()
	var b strings.Builder
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > 4096 {
			fmt.Fprintf(&b, "file %d bytes sha256 %x", len(data), sha256.Sum256(data))
		} else {
			fmt.Fprintf(&b, "file %q", data)
		}
	case unix.S_IFDIR:
		b.WriteString("dir")
	case unix.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "symlink %q", target)
	case unix.S_IFIFO:
		b.WriteString("fifo")
	case unix.S_IFCHR:
		if st.Rdev == 0 {
			b.WriteString("whiteout")
		} else {
			fmt.Fprintf(&b, "chr %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
	case unix.S_IFBLK:
		fmt.Fprintf(&b, "blk %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	default:
		fmt.Fprintf(&b, "type %o", st.Mode&unix.S_IFMT)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		fmt.Fprintf(&b, " %04o", st.Mode&0o7777)
	}
	fmt.Fprintf(&b, " %d:%d", st.Uid, st.Gid)
	b.WriteString(xattrString(t, p, private))
	return b.String()
}

// xattrString lists the xattrs of p (not following a symlink) as
// " name=value" pairs, sorted; security.* are left out.
func xattrString(t *testing.T, p string, private bool) string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ENOTSUP) {
		return ""
	}
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var names []string
	for _, nm := range strings.Split(string(buf[:n]), "\x00") {
		if nm == "" || strings.HasPrefix(nm, "security.") || (!private && isUnionXattr(nm)) {
			continue
		}
		names = append(names, nm)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, nm := range names {
		v := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, nm, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, nm, err)
		}
		fmt.Fprintf(&b, " %s=%q", nm, v[:n])
	}
	return b.String()
}

// dumpTree describes every object under root, keyed by path ("." for
// root itself).
func dumpTree(t *testing.T, root string, private bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		out[rel] = describe(t, p, &st, private)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fingerprint hashes everything about the trees under dirs that a change
// would touch: dumps with the union's xattrs, inode numbers, link counts,
// sizes, and modification and change times.
func fingerprint(t *testing.T, dirs ...string) [32]byte {
	t.Helper()
	h := sha256.New()
	for _, root := range dirs {
		d := dumpTree(t, root, true)
		keys := make([]string, 0, len(d))
		for k := range d {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, k), &st); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(h, "%s\x00%s\x00%s %d %d %d %d.%d %d.%d\n", root, k, d[k], st.Ino, st.Nlink, st.Size,
				st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
		}
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// guardLowers fails the test if the trees under dirs change before it ends.
// It returns a function that takes the trees as they are then as the ones
// to keep, for a test that changes them in ways the builder cannot.
func guardLowers(t *testing.T, dirs ...string) (rearm func()) {
	t.Helper()
	before := fingerprint(t, dirs...)
	t.Cleanup(func() {
		if after := fingerprint(t, dirs...); after != before {
			t.Errorf("lower layers %v changed", dirs)
		}
	})
	return func() { before = fingerprint(t, dirs...) }
}

// testStack is a stack on t.TempDir layers.
type testStack struct {
	*Stack
	lowers      []string // top-most first
	upper, work string
	cfg         Config
	rearm       func() // see guardLowers
}

// newTestStack builds the upper tree (nil: empty) and the lowers (top-most
// first), opens a stack on them and, when the test ends, checks that the
// lowers are unchanged and that the work directory is empty.
func newTestStack(t *testing.T, upper []entry, lowers ...[]entry) *testStack {
	t.Helper()
	ts := buildLayers(t, upper, lowers)
	ts.cfg = Config{Lowers: ts.lowers, Upper: ts.upper, Work: ts.work}
	ts.open(t)
	return ts
}

// newROStack is newTestStack without an upper layer.
func newROStack(t *testing.T, lowers ...[]entry) *testStack {
	t.Helper()
	ts := buildLayers(t, nil, lowers)
	ts.cfg = Config{Lowers: ts.lowers}
	ts.open(t)
	return ts
}

func buildLayers(t *testing.T, upper []entry, lowers [][]entry) *testStack {
	t.Helper()
	root := t.TempDir()
	ts := &testStack{upper: filepath.Join(root, "upper"), work: filepath.Join(root, "work")}
	for i, l := range lowers {
		d := filepath.Join(root, fmt.Sprintf("lower%d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		buildTree(t, d, l)
		ts.lowers = append(ts.lowers, d)
	}
	for _, d := range []string{ts.upper, ts.work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	buildTree(t, ts.upper, upper)
	ts.rearm = guardLowers(t, ts.lowers...)
	return ts
}

// open opens (again: a remount) the stack on ts's directories.
func (ts *testStack) open(t *testing.T) {
	t.Helper()
	if ts.Stack != nil {
		ts.Stack.Close()
	}
	s, err := Open(ts.cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ts.Stack = s
	t.Cleanup(func() {
		if ts.Stack != s {
			return // reopened
		}
		s.Close()
		if ts.cfg.Upper != "" {
			assertWorkEmpty(t, ts.work)
		}
	})
}

// assertWorkEmpty fails unless WORK/work is empty.
func assertWorkEmpty(t *testing.T, work string) {
	t.Helper()
	names, err := os.ReadDir(filepath.Join(work, "work"))
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 0 {
		var ns []string
		for _, n := range names {
			ns = append(ns, n.Name())
		}
		t.Errorf("work directory not empty: %v", ns)
	}
}

// lookup walks the merged view from the root to rel.
func (ts *testStack) lookup(rel string) (*Object, error) {
	o, err := ts.Root()
	if err != nil || rel == "" || rel == "." {
		return o, err
	}
	cur := ""
	for _, name := range strings.Split(rel, "/") {
		if o, err = ts.Lookup(o, cur, name); err != nil {
			return nil, err
		}
		cur = join(cur, name)
	}
	return o, nil
}

func (ts *testStack) mustLookup(t *testing.T, rel string) *Object {
	t.Helper()
	o, err := ts.lookup(rel)
	if err != nil {
		t.Fatalf("lookup %s: %v", rel, err)
	}
	return o
}

// at returns rel's parent directory object, the parent's path, rel's name
// and rel's object (nil when the merged view has no rel).
func (ts *testStack) at(t *testing.T, rel string) (dir *Object, dirRel, name string, o *Object) {
	t.Helper()
	dirRel, name = split(rel)
	dir = ts.mustLookup(t, dirRel)
	o, err := ts.Lookup(dir, dirRel, name)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		t.Fatalf("lookup %s: %v", rel, err)
	}
	return dir, dirRel, name, o
}

// read returns the contents of the merged file rel.
func (ts *testStack) read(t *testing.T, rel string) string {
	t.Helper()
	o := ts.mustLookup(t, rel)
	fd, _, err := ts.Open(o, rel, unix.O_RDONLY)
	if err != nil {
		t.Fatalf("open %s: %v", rel, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// mergedDump describes every object of the merged view below rel the way
// dumpTree does a layer, keyed by path relative to rel ("." for rel).
func (ts *testStack) mergedDump(t *testing.T, rel string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(o *Object, rel, key string)
	walk = func(o *Object, rel, key string) {
		st, err := ts.Stat(o, rel)
		if err != nil {
			t.Fatalf("stat %s: %v", rel, err)
		}
		// The object's own layer path describes it; the merged view
		// shows its attributes and non-private xattrs unchanged.
		out[key] = describe(t, filepath.Join(o.Layer.Dir, o.loc(rel)), &st, false)
		if !o.IsDir() {
			return
		}
		ents, err := ts.Readdir(o, rel)
		if err != nil {
			t.Fatalf("readdir %s: %v", rel, err)
		}
		for _, e := range ents {
			c, err := ts.Lookup(o, rel, e.Name)
			if err != nil {
				t.Fatalf("lookup %s/%s: %v", rel, e.Name, err)
			}
			k := e.Name
			if key != "." {
				k = key + "/" + e.Name
			}
			walk(c, join(rel, e.Name), k)
		}
	}
	walk(ts.mustLookup(t, rel), rel, ".")
	return out
}

// wantErrno fails unless err wraps want and, as every error of the engine
// must, some syscall.Errno.
func wantErrno(t *testing.T, err error, want unix.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("got error %v, want %v", err, want)
	}
	if err != nil && !errors.As(err, new(syscall.Errno)) {
		t.Errorf("error %q wraps no syscall.Errno", err)
	}
}

// diffMaps returns the differences between got and want, one per line.
func diffMaps(got, want map[string]string) string {
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	var ks []string
	for k := range keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for _, k := range ks {
		g, gok := got[k]
		w, wok := want[k]
		switch {
		case !gok:
			fmt.Fprintf(&b, "  %s: missing, want %s\n", k, w)
		case !wok:
			fmt.Fprintf(&b, "  %s: got %s, want nothing\n", k, g)
		case g != w:
			fmt.Fprintf(&b, "  %s: got %s, want %s\n", k, g, w)
		}
	}
	return b.String()
}

// lstat stats p without following a symlink.
func lstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func exists(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil
}

func isWhiteoutAt(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && isWhiteout(&st)
}

func isOpaqueAt(p string) bool {
	v := make([]byte, 8)
	n, err := unix.Lgetxattr(p, "trusted.overlay.opaque", v)
	return err == nil && string(v[:n]) == "y"
}

func TestTreeBuildAndDump(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	buildTree(t, root, []entry{
		file("a/f", "data").withMode(0o600).withXattr("user.k", "v"),
		symlink("a/l", "../x"),
		fifo("p"),
		whiteout("w"),
		opaque("o"),
		marker("a/gone"),
		hardlink("h", "a/f"),
	})
	got := dumpTree(t, root, false)
	want := map[string]string{
		".":          "dir 0755 0:0",
		"a":          "dir 0755 0:0",
		"a/f":        `file "data" 0600 0:0 user.k="v"`,
		"a/l":        `symlink "../x" 0:0`,
		"a/.wh.gone": `file "" 0644 0:0`,
		"p":          "fifo 0644 0:0",
		"w":          "whiteout 0000 0:0",
		"o":          "dir 0755 0:0",
		"h":          `file "data" 0600 0:0 user.k="v"`,
	}
	if d := diffMaps(got, want); d != "" {
		t.Errorf("dump differs:\n%s", d)
	}
	if !isOpaqueAt(filepath.Join(root, "o")) {
		t.Error("o not opaque")
	}
}

// isUnionXattr reports an xattr in the namespaces the union keeps for its
// markers and state.
func isUnionXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.") ||
		name == "user.fuseoverlayfs.opaque"
}
