package layer

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A writeOp builds one object of a test layer directory under root.
type writeOp func(t *testing.T, root string)

// writeFx holds the constructors of writeOps; every object gets explicit
// permissions, so that the umask does not matter.
type writeFx struct{}

var fx writeFx

func fxPath(t *testing.T, root, p string) string {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	return full
}

func fxCheck(t *testing.T, what string, err error) {
	t.Helper()
	if errors.Is(err, unix.EPERM) && os.Geteuid() != 0 {
		t.Skipf("needs root to %s: %v", what, err)
	}
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func (writeFx) File(p, data string) writeOp {
	return func(t *testing.T, root string) {
		full := fxPath(t, root, p)
		fxCheck(t, "write "+p, os.WriteFile(full, []byte(data), 0o644))
		fxCheck(t, "chmod "+p, os.Chmod(full, 0o644))
	}
}

func (writeFx) Dir(p string) writeOp {
	return func(t *testing.T, root string) {
		full := fxPath(t, root, p)
		if err := os.Mkdir(full, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
		fxCheck(t, "chmod "+p, os.Chmod(full, 0o755))
	}
}

// Opaque makes the directory p, opaque by the kernel's xattr.
func (writeFx) Opaque(p string) writeOp {
	return func(t *testing.T, root string) {
		fx.Dir(p)(t, root)
		fxCheck(t, "mark "+p+" opaque", unix.Setxattr(filepath.Join(root, p), "trusted.overlay.opaque", []byte("y"), 0))
	}
}

// Whiteout makes the kernel's whiteout p: a 0/0 character device.
func (writeFx) Whiteout(p string) writeOp {
	return func(t *testing.T, root string) {
		fxCheck(t, "mknod whiteout "+p, unix.Mknod(fxPath(t, root, p), unix.S_IFCHR, 0))
	}
}

// Marker makes the file p, for a ".wh." marker named in full.
func (writeFx) Marker(p string) writeOp { return fx.File(p, "") }

func (writeFx) Symlink(p, target string) writeOp {
	return func(t *testing.T, root string) {
		fxCheck(t, "symlink "+p, os.Symlink(target, fxPath(t, root, p)))
	}
}

func (writeFx) Link(p, target string) writeOp {
	return func(t *testing.T, root string) {
		fxCheck(t, "link "+p, os.Link(filepath.Join(root, target), fxPath(t, root, p)))
	}
}

// Node makes a FIFO, socket or device node p.
func (writeFx) Node(p string, mode uint32, major, minor uint32) writeOp {
	return func(t *testing.T, root string) {
		full := fxPath(t, root, p)
		fxCheck(t, "mknod "+p, unix.Mknod(full, mode, int(unix.Mkdev(major, minor))))
		fxCheck(t, "chmod "+p, unix.Chmod(full, mode&0o7777))
	}
}

func (writeFx) Xattr(p, name, val string) writeOp {
	return func(t *testing.T, root string) {
		fxCheck(t, "setxattr "+p+" "+name, unix.Lsetxattr(filepath.Join(root, p), name, []byte(val), 0))
	}
}

func (writeFx) Chown(p string, uid, gid int) writeOp {
	return func(t *testing.T, root string) {
		fxCheck(t, "chown "+p, os.Lchown(filepath.Join(root, p), uid, gid))
	}
}

func (writeFx) Chmod(p string, mode uint32) writeOp {
	return func(t *testing.T, root string) {
		fxCheck(t, "chmod "+p, unix.Chmod(filepath.Join(root, p), mode))
	}
}

// Sparse makes p a file of size bytes that holds only tail at its end.
func (writeFx) Sparse(p string, size int64, tail string) writeOp {
	return func(t *testing.T, root string) {
		f, err := os.Create(fxPath(t, root, p))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte(tail), size-int64(len(tail))); err != nil {
			t.Fatal(err)
		}
		fxCheck(t, "chmod "+p, f.Chmod(0o644))
	}
}

func buildLayer(t *testing.T, ops []writeOp) string {
	t.Helper()
	root := t.TempDir()
	for _, op := range ops {
		op(t, root)
	}
	return root
}

// tarEntry is a header of a written layer with the data that followed it.
type tarEntry struct {
	*tar.Header
	data []byte
}

func readLayer(t *testing.T, b []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read layer: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read layer %s: %v", h.Name, err)
		}
		out = append(out, tarEntry{h, data})
	}
}

// writeLayer runs Write and checks what every canonical layer must be:
// see checkCanonical.
func writeLayer(t *testing.T, upper string, lowers []string, opt Options) ([]byte, []tarEntry) {
	t.Helper()
	var buf bytes.Buffer
	st, err := Write(&buf, upper, lowers, opt)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	ents := readLayer(t, buf.Bytes())
	checkCanonical(t, buf.Bytes(), ents, st)
	return buf.Bytes(), ents
}

// checkCanonical checks the properties of the package doc's canonical form
// and of image-spec's layer.md that hold for every layer: relative unique
// names, directories with a trailing slash before their children, markers
// as empty mode-0 files owned by 0:0 at time 0 before the other entries of
// their directory, nothing inside a whiteout, whole-second mtimes, no
// atime, ctime, uname or gname, the Stats, and that GNU tar reads it.
func checkCanonical(t *testing.T, b []byte, ents []tarEntry, st Stats) {
	t.Helper()
	if len(b)%512 != 0 || !bytes.Equal(b[len(b)-1024:], make([]byte, 1024)) {
		t.Errorf("layer does not end in the 1024-byte zero trailer")
	}
	seen := map[string]bool{}
	whiteouts := map[string]bool{}
	lastNonMarker := map[string]string{} // dir -> last ordinary entry
	var files int
	var nbytes int64
	for _, e := range ents {
		h := e.Header
		name := strings.TrimSuffix(h.Name, "/")
		if name == "" || strings.HasPrefix(name, "/") || strings.HasPrefix(name, "./") || strings.Contains("/"+name+"/", "/../") {
			t.Errorf("%q: not a clean relative name", h.Name)
		}
		if seen[name] {
			t.Errorf("%q: duplicate entry", h.Name)
		}
		seen[name] = true
		if (h.Typeflag == tar.TypeDir) != strings.HasSuffix(h.Name, "/") {
			t.Errorf("%q: type %c and trailing slash disagree", h.Name, h.Typeflag)
		}
		dir, base := filepath.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		if dir != "" && !seen[dir] {
			t.Errorf("%q comes before its directory", h.Name)
		}
		for d := dir; d != ""; d = filepath.Dir(d) {
			if whiteouts[d] {
				t.Errorf("%q is inside the whited-out %q", h.Name, d)
			}
			if d == "." {
				break
			}
		}
		if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() || h.Uname != "" || h.Gname != "" {
			t.Errorf("%q: atime %v ctime %v uname %q gname %q, want none", h.Name, h.AccessTime, h.ChangeTime, h.Uname, h.Gname)
		}
		for k := range h.PAXRecords {
			if k == "atime" || k == "ctime" || strings.Contains(k, ".overlay.") {
				t.Errorf("%q: PAX record %s", h.Name, k)
			}
		}
		if h.ModTime.Nanosecond() != 0 {
			t.Errorf("%q: mtime %v not whole seconds", h.Name, h.ModTime)
		}
		if strings.HasPrefix(base, ".wh.") {
			if h.Typeflag != tar.TypeReg || h.Size != 0 || h.Mode != 0 || h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 || hasXattrs(h) {
				t.Errorf("%q: marker %+v, want an empty regular file, mode 0, 0:0, mtime 0", h.Name, h)
			}
			if last, ok := lastNonMarker[dir]; ok {
				t.Errorf("%q comes after %q of the same directory", h.Name, last)
			}
			if base != ".wh..wh..opq" {
				whiteouts[commitJoin(dir, strings.TrimPrefix(base, ".wh."))] = true
			}
		} else {
			lastNonMarker[dir] = h.Name
		}
		if h.Typeflag == tar.TypeReg && !strings.HasPrefix(base, ".wh.") {
			files++
			nbytes += h.Size
		}
	}
	if st.Entries != len(ents) || st.Files != files || st.Bytes != nbytes {
		t.Errorf("Stats %+v, want {Entries:%d Files:%d Bytes:%d}", st, len(ents), files, nbytes)
	}
	if gnuTar, err := exec.LookPath("tar"); err == nil {
		cmd := exec.Command(gnuTar, "-tf", "-")
		cmd.Stdin = bytes.NewReader(b)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GNU tar -tf rejects the layer: %v\n%s", err, out)
		}
	}
}

func hasXattrs(h *tar.Header) bool {
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			return true
		}
	}
	return false
}

// renderLayer describes the entries of a layer, one line each: name, then
// type, permissions and owner, then size, link or device, then xattrs.
func renderLayer(ents []tarEntry) []string {
	var out []string
	for _, e := range ents {
		h := e.Header
		line := fmt.Sprintf("%s %c %04o %d:%d", h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid)
		switch h.Typeflag {
		case tar.TypeReg:
			line += fmt.Sprintf(" %d", h.Size)
		case tar.TypeSymlink, tar.TypeLink:
			line += " -> " + h.Linkname
		case tar.TypeChar, tar.TypeBlock:
			line += fmt.Sprintf(" %d:%d", h.Devmajor, h.Devminor)
		}
		var xs []string
		for k, v := range h.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				xs = append(xs, fmt.Sprintf("%s=%q", x, v))
			}
		}
		if len(xs) > 0 {
			slices.Sort(xs)
			line += " " + strings.Join(xs, " ")
		}
		out = append(out, line)
	}
	return out
}

// asMe returns the render lines want with the owner 0:0 of objects (not
// of markers) as the user running the test, who made them.
func asMe(want []string) []string {
	me := fmt.Sprintf(" %d:%d", os.Getuid(), os.Getgid())
	out := make([]string, len(want))
	for i, l := range want {
		if !strings.Contains(l, ".wh.") {
			l = strings.Replace(l, " 0:0", me, 1)
		}
		out[i] = l
	}
	return out
}

func layerNames(ents []tarEntry) []string {
	var out []string
	for _, e := range ents {
		out = append(out, e.Name)
	}
	return out
}

var (
	long100 = strings.Repeat("n", 120)
	long255 = strings.Repeat("x", 255)
	longTgt = "/" + strings.Repeat("target/", 50)
	// capV2 and capV3 grant CAP_NET_BIND_SERVICE (effective), the second
	// as revision 3 with root uid 1000.
	capV2 = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	capV3 = "\x01\x00\x00\x03\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xe8\x03\x00\x00"
)

// TestWrite covers the commit rows of layers.md §7, each a subtest: the
// lowers (top-most first) and the upper are built by hand in the format
// kernel overlayfs writes, and want is the layer rendered by renderLayer, or
// its names when the lines have no spaces.
func TestWrite(t *testing.T) {
	cases := []struct {
		name   string
		lowers [][]writeOp
		upper  []writeOp
		want   []string
		warn   string // a substring of the one warning expected
		errno  unix.Errno
	}{{
		name:   "file deleted",
		lowers: [][]writeOp{{fx.File("d/f", "f"), fx.File("d/g", "g")}},
		upper:  []writeOp{fx.Dir("d"), fx.Whiteout("d/f")},
		want:   []string{"d/ 5 0755 0:0", "d/.wh.f 0 0000 0:0 0"},
	}, {
		name:   "dir deleted",
		lowers: [][]writeOp{{fx.File("d/sub/x", "x"), fx.File("d/sub/deeper/y", "y")}},
		upper:  []writeOp{fx.Dir("d"), fx.Whiteout("d/sub")},
		want:   []string{"d/", "d/.wh.sub"},
	}, {
		name:   "dir deleted and recreated",
		lowers: [][]writeOp{{fx.File("a/b/x", "x"), fx.File("a/c", "c")}},
		upper:  []writeOp{fx.Dir("a"), fx.Opaque("a/b"), fx.File("a/b/new", "n")},
		want:   []string{"a/", "a/b/", "a/b/.wh..wh..opq", "a/b/new"},
	}, {
		name:   "nested opaque",
		lowers: [][]writeOp{{fx.File("a/b/c/x", "x"), fx.File("a/y", "y")}},
		upper: []writeOp{
			fx.Opaque("a"), fx.Dir("a/b"), fx.Opaque("a/b/c"), fx.File("a/b/c/z", "z"),
			// Whiteouts in an opaque directory hide nothing.
			fx.Whiteout("a/y"),
		},
		want: []string{"a/", "a/.wh..wh..opq", "a/b/", "a/b/c/", "a/b/c/z"},
	}, {
		name:   "opaque marker from a lower below the top one",
		lowers: [][]writeOp{{fx.File("other", "o")}, {fx.File("d/x", "x")}},
		upper:  []writeOp{fx.Opaque("d")},
		want:   []string{"d/", "d/.wh..wh..opq"},
	}, {
		name:   "dir replaced by file",
		lowers: [][]writeOp{{fx.File("d/x", "x")}},
		upper:  []writeOp{fx.File("d", "now a file")},
		want:   []string{"d"},
	}, {
		name:   "file replaced by dir",
		lowers: [][]writeOp{{fx.File("f", "f"), fx.Symlink("s", "f")}},
		upper:  []writeOp{fx.Opaque("f"), fx.File("f/x", "x"), fx.Opaque("s")},
		want:   []string{"f/", "f/x", "s/"},
	}, {
		name:   "whiteout over nothing",
		lowers: [][]writeOp{{fx.File("d/x", "x")}},
		upper:  []writeOp{fx.Whiteout("never"), fx.Dir("d"), fx.Whiteout("d/never"), fx.Dir("new"), fx.Whiteout("new/x")},
		want:   []string{"d/", "new/"},
	}, {
		name:   "whiteouts before siblings, sorted",
		lowers: [][]writeOp{{fx.File("d/b", "b"), fx.File("d/z", "z"), fx.File("d/a/x", "x")}},
		upper:  []writeOp{fx.Dir("d"), fx.File("d/0", "0"), fx.Whiteout("d/z"), fx.Whiteout("d/b"), fx.Dir("d/a"), fx.File("d/a/y", "y")},
		want:   []string{"d/", "d/.wh.b", "d/.wh.z", "d/0", "d/a/", "d/a/y"},
	}, {
		name:  "symlinks",
		upper: []writeOp{fx.Symlink("rel", "../x"), fx.Symlink("abs", "/etc/passwd"), fx.Symlink("long", longTgt)},
		want:  []string{"abs 2 0777 0:0 -> /etc/passwd", "long 2 0777 0:0 -> " + longTgt, "rel 2 0777 0:0 -> ../x"},
	}, {
		name:   "hard links",
		lowers: [][]writeOp{{fx.File("lf", "lower")}},
		upper: []writeOp{
			fx.File("h1", "data"), fx.Chmod("h1", 0o4750), fx.Xattr("h1", "user.k", "v"), fx.Link("h2", "h1"),
			fx.Link("sub/h0", "h1"),
			// ln lowerfile new: the kernel copies lowerfile up.
			fx.File("lf", "lower"), fx.Link("new", "lf"),
		},
		want: []string{
			"h1 0 4750 0:0 4 user.k=\"v\"", "h2 1 4750 0:0 -> h1 user.k=\"v\"",
			"lf 0 0644 0:0 5", "new 1 0644 0:0 -> lf",
			"sub/ 5 0755 0:0", "sub/h0 1 4750 0:0 -> h1 user.k=\"v\"",
		},
	}, {
		name:  "security.capability",
		upper: []writeOp{fx.File("v2", "x"), fx.Xattr("v2", "security.capability", capV2)},
		want:  []string{fmt.Sprintf("v2 0 0644 0:0 1 security.capability=%q", capV2)},
	}, {
		name: "xattrs",
		upper: []writeOp{
			fx.File("f", "x"), fx.Xattr("f", "user.keep", "1"), fx.Xattr("f", "user.overlay.origin", "o"),
			fx.Xattr("f", "trusted.overlay.unionmount.ino", "9"), fx.Xattr("f", "user.rootlesscontainers", "r"),
			fx.Xattr("f", "user.empty", ""), fx.Xattr("f", "trusted.overlay.overlay.x", "escaped"),
			fx.Opaque("d"), fx.Xattr("d", "user.dir", "2"),
		},
		want: []string{"d/ 5 0755 0:0 user.dir=\"2\"", "f 0 0644 0:0 1 user.keep=\"1\""},
	}, {
		name:  "socket",
		upper: []writeOp{fx.Node("sock", unix.S_IFSOCK|0o755, 0, 0), fx.File("z", "")},
		want:  []string{"z"},
		warn:  "sock: socket left out",
	}, {
		name:  "fifo",
		upper: []writeOp{fx.Node("p", unix.S_IFIFO|0o640, 0, 0)},
		want:  []string{"p 6 0640 0:0"},
	}, {
		name:  "devices",
		upper: []writeOp{fx.Node("null", unix.S_IFCHR|0o666, 1, 3), fx.Node("loop", unix.S_IFBLK|0o660, 7, 300)},
		want:  []string{"loop 4 0660 0:0 7:300", "null 3 0666 0:0 1:3"},
	}, {
		name:  "sparse",
		upper: []writeOp{fx.Sparse("s", 3<<20, "end")},
		want:  []string{fmt.Sprintf("s 0 0644 0:0 %d", 3<<20)},
	}, {
		name:   "long names",
		lowers: [][]writeOp{{fx.File(long255, "x")}},
		upper: []writeOp{
			fx.File(long100+"/"+long100+"/f", "x"), fx.File("d/"+long255, "y"), fx.Whiteout(long255),
		},
		want: []string{".wh." + long255, "d/", "d/" + long255, long100 + "/", long100 + "/" + long100 + "/", long100 + "/" + long100 + "/f"},
	}, {
		name:  "non-UTF-8 name",
		upper: []writeOp{fx.File("caf\xe9\xff", "x")},
		want:  []string{"caf\xe9\xff"},
	}, {
		name:  "uid 3000000",
		upper: []writeOp{fx.File("f", "x"), fx.Chown("f", 3000000, 3000001)},
		want:  []string{"f 0 0644 3000000:3000001 1"},
	}, {
		name:   "redundant fuse-overlayfs markers",
		lowers: [][]writeOp{{fx.File("d/x", "x"), fx.File("w/x", "x"), fx.File("w/y", "y")}},
		upper: []writeOp{
			fx.Opaque("d"), fx.Marker("d/.wh..wh..opq"), fx.Whiteout("d/.wh..opq"), fx.File("d/n", "n"),
			fx.Dir("w"), fx.Whiteout("w/x"), fx.Marker("w/.wh.x"), fx.Marker("w/.wh.y"),
		},
		want: []string{"d/", "d/.wh..wh..opq", "d/n", "w/", "w/.wh.x", "w/.wh.y"},
	}, {
		name:   "OCI-style markers",
		lowers: [][]writeOp{{fx.File("d/x", "x"), fx.File("e/x", "x")}},
		upper: []writeOp{
			fx.Dir("d"), fx.Marker("d/.wh..wh..opq"), fx.Dir("e"), fx.Xattr("e", "user.overlay.opaque", "y"),
		},
		want: []string{"d/", "d/.wh..wh..opq", "e/", "e/.wh..wh..opq"},
	}, {
		name:   "opaque root",
		lowers: [][]writeOp{{fx.File("x", "x")}},
		upper:  []writeOp{fx.Opaque(""), fx.File("y", "y")},
		want:   []string{".wh..wh..opq", "y"},
	}, {
		name:   "explicit replacement: a marker beside the directory",
		lowers: [][]writeOp{{fx.File("c/x", "x"), fx.File("f", "f")}},
		upper:  []writeOp{fx.Marker(".wh.c"), fx.Dir("c"), fx.File("c/y", "y"), fx.Marker(".wh.f"), fx.Dir("f")},
		want:   []string{"c/", "c/.wh..wh..opq", "c/y", "f/"},
	}, {
		name:   "one name of a lower hard link pair changed",
		lowers: [][]writeOp{{fx.File("a", "old"), fx.Link("b", "a")}},
		upper:  []writeOp{fx.File("a", "new")},
		want:   []string{"a 0 0644 0:0 3"},
	}, {
		name:  "redirect refused",
		upper: []writeOp{fx.Dir("moved"), fx.Xattr("moved", "trusted.overlay.redirect", "/old")},
		errno: unix.ENOTSUP,
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var lowers []string
			for _, l := range c.lowers {
				lowers = append(lowers, buildLayer(t, l))
			}
			upper := buildLayer(t, c.upper)
			var warnings []string
			opt := Options{Warn: func(m string) { warnings = append(warnings, m) }}
			if c.errno != 0 {
				_, err := Write(io.Discard, upper, lowers, opt)
				if !errors.Is(err, c.errno) || !strings.Contains(err.Error(), "redirect_dir/metacopy") {
					t.Fatalf("Write = %v, want %v naming redirect_dir/metacopy", err, c.errno)
				}
				return
			}
			_, ents := writeLayer(t, upper, lowers, opt)
			got, want := layerNames(ents), c.want
			if strings.Contains(c.want[0], " ") {
				got, want = renderLayer(ents), asMe(c.want)
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("layer:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if c.warn == "" && len(warnings) > 0 || c.warn != "" && (len(warnings) != 1 || !strings.Contains(warnings[0], c.warn)) {
				t.Errorf("warnings %q, want one with %q", warnings, c.warn)
			}
		})
	}
}

// TestWriteData checks the data and the times of the entries: file data
// in full (a sparse file's holes as zeros), mtimes as on disk in whole
// seconds, markers at time 0.
func TestWriteData(t *testing.T) {
	upper := buildLayer(t, []writeOp{fx.File("a", "hello"), fx.Sparse("s", 1<<20, "end"), fx.Dir("d")})
	mt := time.Date(2021, 3, 4, 5, 6, 7, 890000000, time.UTC)
	for _, p := range []string{"a", "s", "d"} {
		if err := os.Chtimes(filepath.Join(upper, p), mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	_, ents := writeLayer(t, upper, nil, Options{})
	want := map[string][]byte{"a": []byte("hello"), "s": append(make([]byte, 1<<20-3), "end"...), "d/": nil}
	for _, e := range ents {
		if !bytes.Equal(e.data, want[e.Name]) {
			t.Errorf("%s: data of %d bytes differs", e.Name, len(e.data))
		}
		if !e.ModTime.Equal(mt.Truncate(time.Second)) {
			t.Errorf("%s: mtime %v, want %v", e.Name, e.ModTime, mt.Truncate(time.Second))
		}
	}
}

// TestWriteCapabilityRevision3 checks that revision 3 file capabilities
// are written as revision 2 with the same capability sets.
func TestWriteCapabilityRevision3(t *testing.T) {
	if got := string(capRevision2([]byte(capV3))); got != capV2 {
		t.Errorf("capRevision2(v3) = %q, want %q", got, capV2)
	}
	if got := string(capRevision2([]byte(capV2))); got != capV2 {
		t.Errorf("capRevision2(v2) = %q, want it unchanged", got)
	}
}

// setTreeTimes sets the mtime of every object below root (not root) to
// mtime and the atime to atime, children before their directory.
func setTreeTimes(t *testing.T, root string, mtime, atime time.Time) {
	t.Helper()
	var paths []string
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if p != root {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	for i := len(paths) - 1; i >= 0; i-- {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWriteReproducible checks that the same tree gives the same bytes:
// written twice, and built twice with other inode numbers, atimes and
// ctimes; and that Epoch clamps the mtimes.
func TestWriteReproducible(t *testing.T) {
	lowerOps := []writeOp{fx.File("d/x", "x"), fx.File("o/y", "y"), fx.File("keep", "k")}
	upperOps := []writeOp{
		fx.Dir("d"), fx.Whiteout("d/x"), fx.File("d/new", "new"), fx.Opaque("o"), fx.File("o/z", "z"),
		fx.File("h", "h"), fx.Link("h2", "h"), fx.Symlink("s", "h"), fx.Xattr("h", "user.a", "1"),
		fx.Node("p", unix.S_IFIFO|0o600, 0, 0),
	}
	mtime := time.Date(2024, 1, 2, 3, 4, 5, 600000000, time.UTC)
	build := func(atime time.Time) (string, string) {
		lower := buildLayer(t, lowerOps)
		// Something else first, so that the inode numbers differ.
		buildLayer(t, []writeOp{fx.File("spacer", "s")})
		upper := buildLayer(t, upperOps)
		setTreeTimes(t, upper, mtime, atime)
		return lower, upper
	}
	l1, u1 := build(time.Unix(1000, 0))
	time.Sleep(10 * time.Millisecond) // other ctimes
	l2, u2 := build(time.Unix(2000, 5))

	a, _ := writeLayer(t, u1, []string{l1}, Options{})
	b, _ := writeLayer(t, u1, []string{l1}, Options{})
	if !bytes.Equal(a, b) {
		t.Errorf("the same tree written twice gives different layers")
	}
	c, _ := writeLayer(t, u2, []string{l2}, Options{})
	if !bytes.Equal(a, c) {
		t.Errorf("a copy of the tree (other inodes, atimes, ctimes) gives a different layer")
	}

	epoch := time.Date(2023, 6, 7, 8, 9, 10, 500, time.UTC)
	_, ents := writeLayer(t, u1, []string{l1}, Options{Epoch: &epoch})
	for _, e := range ents {
		want := epoch.Truncate(time.Second)
		if strings.Contains(e.Name, ".wh.") {
			want = time.Unix(0, 0)
		}
		if !e.ModTime.Equal(want) {
			t.Errorf("%s: mtime %v with Epoch %v, want %v", e.Name, e.ModTime, epoch, want)
		}
	}
	later := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	d, _ := writeLayer(t, u1, []string{l1}, Options{Epoch: &later})
	if !bytes.Equal(a, d) {
		t.Errorf("an Epoch after every mtime changes the layer")
	}
}

func TestWriteEmpty(t *testing.T) {
	b, ents := writeLayer(t, t.TempDir(), nil, Options{})
	if len(ents) != 0 || len(b) != 1024 {
		t.Errorf("empty upper gives %d entries, %d bytes; want the 1024-byte empty tar", len(ents), len(b))
	}
}

func TestWriteProgress(t *testing.T) {
	var ops []writeOp
	for i := range 2500 {
		ops = append(ops, fx.File(fmt.Sprintf("d%d/f%d", i%10, i), "x"))
	}
	upper := buildLayer(t, ops)
	var calls int
	var lastEntries int
	var lastBytes int64
	_, _ = writeLayer(t, upper, nil, Options{Progress: func(e int, b int64) {
		calls++
		if e < lastEntries || b < lastBytes {
			t.Errorf("progress went back: %d,%d after %d,%d", e, b, lastEntries, lastBytes)
		}
		lastEntries, lastBytes = e, b
	}})
	if calls < 3 || lastEntries != 2510 || lastBytes != 2500 {
		t.Errorf("progress called %d times, last with %d entries %d bytes; want >= 3, ending at 2510, 2500", calls, lastEntries, lastBytes)
	}
}
