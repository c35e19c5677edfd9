package layer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// apRequireRoot skips t unless it runs as root.
func apRequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (devices, ownership, trusted xattrs)")
	}
}

// apApply applies the tar b into a new directory "layer" of a fresh
// temporary directory and returns its path and the warnings.
func apApply(t testing.TB, b []byte, opt ApplyOptions) (string, []string) {
	t.Helper()
	var warns []string
	opt.Warn = func(m string) { warns = append(warns, m) }
	dir := filepath.Join(t.TempDir(), "layer")
	if _, err := Apply(bytes.NewReader(b), dir, opt); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return dir, warns
}

// apIsWhiteout reports whether p is cow's whiteout: a 0/0 character device.
func apIsWhiteout(t testing.TB, p string) bool {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// apOpaque returns the value of the opaque xattr x of p, or "".
func apOpaque(p, x string) string {
	b := make([]byte, 16)
	n, err := unix.Lgetxattr(p, x, b)
	if err != nil {
		return ""
	}
	return string(b[:n])
}

func TestApplyWritesCowFormat(t *testing.T) {
	apRequireRoot(t)
	mtime := time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC)
	b := apTar(t,
		apDir("etc/", 0o755),
		apOwned(apFile("etc/passwd", 0o644, "root:x:0:0\n"), 0, 0),
		apWhiteout("etc/shadow"),
		apDir("opq/", 0o750),
		apFile("opq/.wh..wh..opq", 0, ""),
		apWhiteout("opq/old"), // redundant in an opaque dir: dropped
		apFile("opq/new", 0o600, "new"),
		apWhiteout("same"), // hides only lower layers: dropped, "same" is ours
		apFile("same", 0o644, "mine"),
		apWhiteout("gone"),
		apWhiteout("gone/inner"), // below a deleted dir: dropped
		apWhiteout("redo"),       // deleted and made again: opaque
		apDir("redo/", 0o755),
		apWhiteout("redo/x"), // inside it: dropped
		apOwned(apXattrs(apFile("bin/ping", 0o4755, "\x7fELF"), "security.capability",
			"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "user.note", "hi"), 1000, 1000),
		apLink("bin/ping2", "bin/ping"),
		apSymlink("bin/sh", "/bin/busybox"),
		apEnt{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		apEnt{Header: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop9", Mode: 0o660, Devmajor: 7, Devminor: 9}},
		apEnt{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o620}},
		apEnt{Header: tar.Header{Typeflag: tar.TypeDir, Name: "dated/", Mode: 0o700, ModTime: mtime}},
		apFile("dated/child", 0o644, ""),
	)
	var got Stats
	var warns []string
	dir := filepath.Join(t.TempDir(), "layer")
	got, err := Apply(bytes.NewReader(b), dir, ApplyOptions{Warn: func(m string) { warns = append(warns, m) }})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stats{Entries: 22, Files: 5, Bytes: int64(len("root:x:0:0\n") + 3 + 4 + 4)}); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
	if len(warns) != 0 {
		t.Errorf("warnings: %q", warns)
	}
	want := []string{
		`"bin" d 0755 0:0`,
		`"bin/ping" f 4755 1000:1000 size=4 sha256=3bdbb4fe8397cd2b security.capability=0100000200200000000000000000000000000000 user.note=6869 link=bin/ping`,
		`"bin/ping2" f 4755 1000:1000 size=4 sha256=3bdbb4fe8397cd2b security.capability=0100000200200000000000000000000000000000 user.note=6869 link=bin/ping`,
		`"bin/sh" l 0777 0:0 target=/bin/busybox`,
		`"dated" d 0700 0:0`,
		`"dated/child" f 0644 0:0 size=0 sha256=e3b0c44298fc1c14`,
		`"dev" d 0755 0:0`,
		`"dev/loop9" b 0660 0:0 rdev=7,9`,
		`"dev/null" c 0666 0:0 rdev=1,3`,
		`"etc" d 0755 0:0`,
		`"etc/passwd" f 0644 0:0 size=11 sha256=7cf1f940025c27c7`,
		`"etc/shadow" c 0000 0:0 rdev=0,0`,
		`"gone" c 0000 0:0 rdev=0,0`,
		`"opq" d 0750 0:0`,
		`"opq/new" f 0600 0:0 size=3 sha256=11507a0e2f5e69d5`,
		`"redo" d 0755 0:0`,
		`"run" d 0755 0:0`,
		`"run/fifo" p 0620 0:0`,
		`"same" f 0644 0:0 size=4 sha256=3fd30542fe3f61b1`,
	}
	applyDiff(t, "unpacked layer", applyTreeList(t, dir), want)
	for _, w := range []string{"etc/shadow", "gone"} {
		if !apIsWhiteout(t, filepath.Join(dir, w)) {
			t.Errorf("%s is not a whiteout", w)
		}
	}
	if v := apOpaque(filepath.Join(dir, "opq"), "trusted.overlay.opaque"); v != "y" {
		t.Errorf("opq: trusted.overlay.opaque = %q, want y", v)
	}
	if v := apOpaque(filepath.Join(dir, "redo"), "trusted.overlay.opaque"); v != "y" {
		t.Errorf("redo: trusted.overlay.opaque = %q, want y", v)
	}
	if v := apOpaque(filepath.Join(dir, "etc"), "trusted.overlay.opaque"); v != "" {
		t.Errorf("etc: trusted.overlay.opaque = %q, want none", v)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "dated"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mtim.Sec != mtime.Unix() {
		t.Errorf("dated: mtime %d, want %d (set after its child)", st.Mtim.Sec, mtime.Unix())
	}
	ents, err := os.ReadDir(filepath.Dir(dir))
	if err != nil || len(ents) != 1 {
		t.Errorf("parent holds %v (%v), want only the layer", ents, err)
	}
}

func TestApplyRootlessPlaceholdersAndUserXattr(t *testing.T) {
	b := apTar(t,
		apDir("d/", 0o755),
		apFile("d/.wh..wh..opq", 0, ""),
		apEnt{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		apEnt{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "fifo", Mode: 0o600}},
		apXattrs(apFile("marker", 0o644, ""), "trusted.overlay.opaque", "y", "user.overlay.opaque", "y", "user.ok", "1"),
	)
	dir, warns := apApply(t, b, ApplyOptions{Rootless: true, UserXattr: true})
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "dev/null"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o7777 != 0o666 || st.Size != 0 {
		t.Errorf("dev/null: mode %o size %d, want an empty regular file 0666", st.Mode, st.Size)
	}
	if err := unix.Lstat(filepath.Join(dir, "fifo"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo: mode %o (%v), want a FIFO", st.Mode, err)
	}
	if v := apOpaque(filepath.Join(dir, "d"), "user.overlay.opaque"); v != "y" {
		t.Errorf("d: user.overlay.opaque = %q, want y", v)
	}
	for _, x := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if v := apOpaque(filepath.Join(dir, "marker"), x); v != "" {
			t.Errorf("marker: %s = %q smuggled in", x, v)
		}
	}
	if v := apOpaque(filepath.Join(dir, "marker"), "user.ok"); v != "1" {
		t.Errorf("marker: user.ok = %q, want 1", v)
	}
	joined := strings.Join(warns, "\n")
	for _, w := range []string{`"dev/null": device 1:3 unpacked as an empty regular file`, "trusted.overlay.opaque dropped", "user.overlay.opaque dropped"} {
		if !strings.Contains(joined, w) {
			t.Errorf("no warning %q in %q", w, warns)
		}
	}
}

func TestApplyImpliedParents(t *testing.T) {
	apRequireRoot(t)
	dir, _ := apApply(t, apTar(t, apOwned(apFile("a/b/c", 0o640, "x"), 5, 6), apDir("a/", 0o700)), ApplyOptions{})
	applyDiff(t, "layer", applyTreeList(t, dir), []string{
		`"a" d 0700 0:0`,
		`"a/b" d 0755 0:0`,
		`"a/b/c" f 0640 5:6 size=1 sha256=2d711642b726b044`,
	})
}

func TestApplyRefusesExistingDir(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "layer")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Apply(bytes.NewReader(apTar(t, apFile("f", 0o644, "x"))), dir, ApplyOptions{})
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Apply over an existing dir: %v, want ErrExist", err)
	}
	ents, _ := os.ReadDir(dir)
	all, _ := os.ReadDir(parent)
	if len(ents) != 0 || len(all) != 1 {
		t.Errorf("left %v in the dir, %v beside it", ents, all)
	}
}

func TestApplyProgress(t *testing.T) {
	var calls [][2]int64
	dir := filepath.Join(t.TempDir(), "layer")
	st, err := Apply(bytes.NewReader(apTar(t, apFile("a", 0o644, "12345"), apFile("b", 0o644, "678"))), dir,
		ApplyOptions{Progress: func(e int, b int64) { calls = append(calls, [2]int64{int64(e), b}) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) == 0 || calls[len(calls)-1] != [2]int64{2, 8} {
		t.Errorf("progress calls %v, want the last to be {2 8}", calls)
	}
	if st != (Stats{Entries: 2, Files: 2, Bytes: 8}) {
		t.Errorf("stats %+v", st)
	}
}

// TestApplySparseKeepsHoles unpacks a GNU tar sparse archive: the file
// gets its declared size, but the holes take no disk space.
func TestApplySparseKeepsHoles(t *testing.T) {
	gtar, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("needs GNU tar to write a sparse archive")
	}
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 30
	if _, err := f.WriteAt([]byte("head"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("middle"), size/2); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, format := range []string{"gnu", "posix"} {
		t.Run(format, func(t *testing.T) {
			out, err := exec.Command(gtar, "--sparse", "--format="+format, "-C", src, "-cf", "-", "sparse").Output()
			if err != nil {
				t.Fatalf("tar: %v", err)
			}
			if len(out) > 1<<20 {
				t.Fatalf("archive of %d bytes is not sparse", len(out))
			}
			dir, _ := apApply(t, out, ApplyOptions{})
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(dir, "sparse"), &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != size || st.Blocks*512 > 1<<20 {
				t.Errorf("size %d, %d bytes on disk; want %d, at most 1 MiB", st.Size, st.Blocks*512, size)
			}
			g, err := os.Open(filepath.Join(dir, "sparse"))
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			buf := make([]byte, 6)
			if _, err := g.ReadAt(buf, size/2); err != nil || string(buf) != "middle" {
				t.Errorf("data at %d: %q (%v)", size/2, buf, err)
			}
		})
	}
}

func TestDecompress(t *testing.T) {
	plain := apTar(t, apFile("f", 0o644, "data"))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain)
	zw.Close()
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"plain", plain, ""},
		{"gzip", gz.Bytes(), ""},
		{"empty", nil, ""},
		{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0, 0, 0}, "zstd"},
		{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0, 0, 0, 0, 0}, "xz"},
		{"truncated gzip", gz.Bytes()[:5], "gzip"},
	}
	if bz, err := exec.LookPath("bzip2"); err == nil {
		cmd := exec.Command(bz, "-c")
		cmd.Stdin = bytes.NewReader(plain)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct {
			name    string
			in      []byte
			wantErr string
		}{"bzip2", out, ""})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := Decompress(bytes.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			want := plain
			if tc.name == "empty" {
				want = nil
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got %d bytes, want %d", len(got), len(want))
			}
		})
	}
}

// TestApplyDirectoryModeAfterChildren unpacks a read-only directory with a
// child as rootless would need it: the mode comes after the child.
func TestApplyDirectoryModeAfterChildren(t *testing.T) {
	dir, _ := apApply(t, apTar(t, apDir("ro/", 0o555), apFile("ro/f", 0o444, "x")), ApplyOptions{Rootless: true})
	got := applyTreeList(t, dir)
	want := []string{`"ro" d 0555`, `"ro/f" f 0444`}
	for i, w := range want {
		if i >= len(got) || !strings.HasPrefix(got[i], w) {
			t.Fatalf("listing %q, want lines starting %q", got, want)
		}
	}
}

// TestApplyUnprivileged runs Apply as an unprivileged user (nobody, in a
// child process of this test binary) with Rootless: devices become
// placeholders, the ownership and the xattrs the kernel refuses are dropped
// with a summary warning, and whiteouts and user.overlay.opaque still work
// (mknod of 0/0 is allowed unprivileged since Linux 5.8).
func TestApplyUnprivileged(t *testing.T) {
	if os.Getenv("LAYER_APPLY_CHILD") != "" {
		apUnprivilegedChild(t, os.Getenv("LAYER_APPLY_CHILD"))
		return
	}
	apRequireRoot(t)
	// The child must reach both the binary and the directory.
	work, err := os.MkdirTemp("", "layer-unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(work, "layer.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(work, "out")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestApplyUnprivileged$", "-test.v")
	cmd.Env = append(os.Environ(), "LAYER_APPLY_CHILD="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestApplyUnprivileged") {
		t.Fatalf("unprivileged child: %v\n%s", err, out)
	}
}

func apUnprivilegedChild(t *testing.T, parent string) {
	if os.Geteuid() == 0 {
		t.Fatal("child runs as root")
	}
	b := apTar(t,
		apDir("ro/", 0o555),
		apOwned(apFile("ro/rootfile", 0o4755, "x"), 0, 0),
		apXattrs(apFile("capfile", 0o755, "y"), "security.capability", exportTestCap, "trusted.t", "v", "user.u", "w"),
		apEnt{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		apWhiteout("gone"),
		apDir("opq/", 0o755),
		apFile("opq/.wh..wh..opq", 0, ""),
	)
	var warns []string
	dir := filepath.Join(parent, "layer")
	_, err := Apply(bytes.NewReader(b), dir, ApplyOptions{Rootless: true, UserXattr: true,
		Warn: func(m string) { warns = append(warns, m) }})
	if err != nil {
		t.Fatal(err)
	}
	uid := os.Geteuid()
	got := applyTreeList(t, dir)
	want := []string{
		fmt.Sprintf(`"capfile" f 0755 %d:%d size=1 sha256=a1fce4363854ff88 user.u=77`, uid, uid),
		fmt.Sprintf(`"dev" d 0755 %d:%d`, uid, uid),
		fmt.Sprintf(`"dev/null" f 0666 %d:%d size=0 sha256=e3b0c44298fc1c14`, uid, uid),
		fmt.Sprintf(`"gone" c 0000 %d:%d rdev=0,0`, uid, uid),
		fmt.Sprintf(`"opq" d 0755 %d:%d`, uid, uid),
		fmt.Sprintf(`"ro" d 0555 %d:%d`, uid, uid),
		// chmod by the owner keeps setuid: only chown would clear it.
		fmt.Sprintf(`"ro/rootfile" f 4755 %d:%d size=1 sha256=2d711642b726b044`, uid, uid),
	}
	applyDiff(t, "unprivileged layer", got, want)
	if v := apOpaque(filepath.Join(dir, "opq"), "user.overlay.opaque"); v != "y" {
		t.Errorf("opq: user.overlay.opaque = %q, want y", v)
	}
	joined := strings.Join(warns, "\n")
	for _, w := range []string{"device 1:3 unpacked as an empty regular file", "owner of ", "xattr of 1 entries not set"} {
		if !strings.Contains(joined, w) {
			t.Errorf("no warning %q in %q", w, warns)
		}
	}
	// A failed unprivileged apply leaves nothing, read-only directories
	// included.
	bad := append(apTar(t, apDir("ro2/", 0o500), apFile("ro2/f", 0o400, "x"))[:1536:1536], bytes.Repeat([]byte{1}, 512)...)
	if _, err := Apply(bytes.NewReader(bad), filepath.Join(parent, "bad"), ApplyOptions{Rootless: true}); err == nil {
		t.Fatal("Apply of a corrupt tar succeeded")
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
}

// TestApplyRacesForOneName runs Applies of one layer side by side: one
// wins the name, the others fail and leave nothing.
func TestApplyRacesForOneName(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "layer")
	b := apTar(t, apFile("a", 0o644, strings.Repeat("x", 1<<20)), apFile("b", 0o644, "y"))
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := Apply(bytes.NewReader(b), dir, ApplyOptions{})
			errs <- err
		}()
	}
	won := 0
	for range 4 {
		if err := <-errs; err == nil {
			won++
		} else if !errors.Is(err, fs.ErrExist) {
			t.Errorf("losing Apply: %v, want ErrExist", err)
		}
	}
	ents, _ := os.ReadDir(parent)
	if won != 1 || len(ents) != 1 {
		t.Errorf("%d Applies won, %d names left; want 1 and 1", won, len(ents))
	}
}
