package layer

import (
	"archive/tar"
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// exportTestCap is a security.capability value (revision 2,
// cap_net_raw permitted and effective).
const exportTestCap = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// exportTestTars returns two layer tars: a base, and a change of it with
// whiteouts, an opaque directory, replacements, hard links, xattrs and
// special files.
func exportTestTars(t testing.TB) (top, base []byte) {
	t.Helper()
	base = apTar(t,
		apDir("etc/", 0o755),
		apFile("etc/passwd", 0o644, "root:x:0:0\n"),
		apFile("etc/shadow", 0o600, "secret"),
		apDir("opq/", 0o755),
		apFile("opq/old", 0o644, "old"),
		apDir("opq/sub/", 0o755),
		apFile("opq/sub/deep", 0o644, "deep"),
		apDir("keep/", 0o755),
		apFile("keep/a", 0o644, "a"),
		apFile("keep/link1", 0o640, "shared"),
		apLink("keep/link2", "keep/link1"),
		apLink("keep/link3", "keep/link1"),
		apDir("dir2file/", 0o755),
		apFile("dir2file/inner", 0o644, "inner"),
		apDir("redo/", 0o755),
		apFile("redo/old", 0o644, "old"),
		apFile("file2dir", 0o644, "file"),
		apSymlink("sym", "etc/passwd"),
		apDir("dev/", 0o755),
		apEnt{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		apEnt{Header: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop7", Mode: 0o660, Uid: 0, Gid: 6, Devmajor: 7, Devminor: 7}},
		apDir("run/", 0o755),
		apEnt{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o620}},
	)
	top = apTar(t,
		apDir("etc/", 0o750),
		apWhiteout("etc/shadow"),
		apXattrs(apFile("etc/hosts", 0o644, "127.0.0.1 localhost\n"), "user.origin", "top"),
		apDir("opq/", 0o700),
		apFile("opq/.wh..wh..opq", 0, ""),
		apFile("opq/new", 0o644, "new"),
		apDir("keep/", 0o755),
		apWhiteout("keep/link3"),
		apWhiteout("dir2file"),
		apFile("dir2file", 0o644, "now a file"),
		apWhiteout("file2dir"),
		apDir("file2dir/", 0o755),
		apFile("file2dir/x", 0o644, "x"),
		apWhiteout("redo"),
		apDir("redo/", 0o711),
		apFile("redo/new", 0o644, "new"),
		apDir("bin/", 0o755),
		apXattrs(apOwned(apFile("bin/tool", 0o755, "tool"), 1000, 100), "security.capability", exportTestCap),
		apLink("bin/tool2", "bin/tool"),
		apWhiteout("run"),
	)
	return top, base
}

// exportTestLayers applies exportTestTars and returns the layer
// directories, top-most first.
func exportTestLayers(t testing.TB) []string {
	t.Helper()
	top, base := exportTestTars(t)
	parent := t.TempDir()
	var dirs []string
	for i, b := range [][]byte{top, base} {
		d := filepath.Join(parent, []string{"top", "base"}[i])
		if _, err := Apply(bytes.NewReader(b), d, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	return dirs
}

// exportTestWant is the merged view of exportTestLayers.
var exportTestWant = []string{
	`"bin" d 0755 0:0`,
	`"bin/tool" f 0755 1000:100 size=4 sha256=7c9bbe5ec9b3fb77 security.capability=0100000200200000002000000000000000000000 link=bin/tool`,
	`"bin/tool2" f 0755 1000:100 size=4 sha256=7c9bbe5ec9b3fb77 security.capability=0100000200200000002000000000000000000000 link=bin/tool`,
	`"dev" d 0755 0:0`,
	`"dev/loop7" b 0660 0:6 rdev=7,7`,
	`"dev/null" c 0666 0:0 rdev=1,3`,
	`"dir2file" f 0644 0:0 size=10 sha256=92af885f330ed4b1`,
	`"etc" d 0750 0:0`,
	`"etc/hosts" f 0644 0:0 size=20 sha256=081ef9d5367595d1 user.origin=746f70`,
	`"etc/passwd" f 0644 0:0 size=11 sha256=7cf1f940025c27c7`,
	`"file2dir" d 0755 0:0`,
	`"file2dir/x" f 0644 0:0 size=1 sha256=2d711642b726b044`,
	`"keep" d 0755 0:0`,
	`"keep/a" f 0644 0:0 size=1 sha256=ca978112ca1bbdca`,
	`"keep/link1" f 0640 0:0 size=6 sha256=a4d26868017c0ccf link=keep/link1`,
	`"keep/link2" f 0640 0:0 size=6 sha256=a4d26868017c0ccf link=keep/link1`,
	`"opq" d 0700 0:0`,
	`"opq/new" f 0644 0:0 size=3 sha256=11507a0e2f5e69d5`,
	`"redo" d 0711 0:0`,
	`"redo/new" f 0644 0:0 size=3 sha256=11507a0e2f5e69d5`,
	`"sym" l 0777 0:0 target=etc/passwd`,
}

func TestExportFlattensLayers(t *testing.T) {
	apRequireRoot(t)
	layers := exportTestLayers(t)
	var b bytes.Buffer
	st, err := Export(&b, layers, Options{})
	if err != nil {
		t.Fatal(err)
	}
	applyDiff(t, "exported tree", applyTarList(t, bytes.NewReader(b.Bytes())), exportTestWant)
	if st.Entries != len(exportTestWant) || st.Files != 9 {
		t.Errorf("stats %+v, want %d entries, 9 files", st, len(exportTestWant))
	}
	// Canonical order: depth-first, each directory sorted; hard links
	// carry their target's header.
	var names []string
	var first *tar.Header
	tr := tar.NewReader(&b)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if strings.Contains(h.Name, ".wh.") {
			t.Errorf("marker %s in the export", h.Name)
		}
		if h.Uname != "" || h.Gname != "" || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: not canonical: %+v", h.Name, h)
		}
		switch h.Name {
		case "keep/link1":
			first = h
		case "keep/link2":
			if h.Typeflag != tar.TypeLink || h.Linkname != "keep/link1" || first == nil ||
				h.Mode != first.Mode || h.Uid != first.Uid || !h.ModTime.Equal(first.ModTime) {
				t.Errorf("link header %+v, target %+v", h, first)
			}
		}
	}
	wantNames := []string{"bin/", "bin/tool", "bin/tool2", "dev/", "dev/loop7", "dev/null", "dir2file", "etc/", "etc/hosts", "etc/passwd",
		"file2dir/", "file2dir/x", "keep/", "keep/a", "keep/link1", "keep/link2", "opq/", "opq/new", "redo/", "redo/new", "sym"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("order %q, want %q", names, wantNames)
	}
}

func TestExportIsDeterministicAndClamped(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Hour)
	ts := []unix.Timespec{unix.NsecToTimespec(future.UnixNano()), unix.NsecToTimespec(future.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, "f"), ts, 0); err != nil {
		t.Fatal(err)
	}
	epoch := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	var one, two bytes.Buffer
	var progress []int
	opt := Options{Epoch: &epoch, Progress: func(n int, _ int64) { progress = append(progress, n) }}
	if _, err := Export(&one, []string{dir}, opt); err != nil {
		t.Fatal(err)
	}
	if _, err := Export(&two, []string{dir}, opt); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one.Bytes(), two.Bytes()) {
		t.Error("two exports of one tree differ")
	}
	if len(progress) == 0 || progress[len(progress)-1] != 2 {
		t.Errorf("progress %v, want a last call with 2 entries", progress)
	}
	tr := tar.NewReader(&one)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime.After(epoch) || h.ModTime.Nanosecond() != 0 {
			t.Errorf("%s: mtime %v, want whole seconds up to %v", h.Name, h.ModTime, epoch)
		}
		for k := range h.PAXRecords {
			if k == "atime" || k == "ctime" || k == "mtime" {
				t.Errorf("%s: PAX record %s", h.Name, k)
			}
		}
	}
}

func TestExportPlainDirectory(t *testing.T) {
	apRequireRoot(t)
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	// Markers of an overlay never reach an export: an opaque xattr is
	// the union's, and cow reads a 0/0 device as a whiteout.
	for x, v := range map[string]string{"trusted.overlay.opaque": "y", "user.overlay.origin": "o", "user.kept": "k"} {
		if err := unix.Lsetxattr(sub, x, []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mknod(filepath.Join(dir, "wh"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "null"), 0o666); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var warns []string
	var b bytes.Buffer
	if _, err := Export(&b, []string{dir}, Options{Warn: func(m string) { warns = append(warns, m) }}); err != nil {
		t.Fatal(err)
	}
	got := applyTarList(t, &b)
	want := []string{
		`"null" c 0666 0:0 rdev=1,3`,
		`"sub" d 0755 0:0 user.kept=6b`,
	}
	applyDiff(t, "export", got, want)
	if len(warns) != 1 || !strings.Contains(warns[0], "sock: socket left out") {
		t.Errorf("warnings %q, want one for the socket", warns)
	}
}

func TestExportNothing(t *testing.T) {
	var b bytes.Buffer
	st, err := Export(&b, nil, Options{})
	if err != nil || st != (Stats{}) || b.Len() != 1024 {
		t.Errorf("Export of no layers: %v, %+v, %d bytes; want the empty tar", err, st, b.Len())
	}
}
