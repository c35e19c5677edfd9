package layer

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// hostileFixChecksum recomputes the checksum of the tar header block b
// after a test changed it.
func hostileFixChecksum(b []byte) {
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// hostileNULName is a tar whose PAX path record holds a NUL, which Go's
// writer refuses to write: a header block of type 'x' made by hand.
func hostileNULName(t testing.TB) []byte {
	rest := " path=a\x00b\n"
	rec := fmt.Sprintf("%d%s", len(rest)+2, rest)
	b := apTar(t, apFile("PaxHeaders/x", 0o644, rec), apFile("x", 0o644, "data"))
	b[156] = tar.TypeXHeader
	hostileFixChecksum(b)
	return b
}

// hostileSparseBomb is a GNU tar holding one sparse file of the given
// declared size and almost no data, or nil without GNU tar.
func hostileSparseBomb(t testing.TB, size int64) []byte {
	gtar, err := exec.LookPath("tar")
	if err != nil {
		return nil
	}
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "bomb"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("x"), size/3)
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command(gtar, "--sparse", "--format=posix", "-C", src, "-cf", "-", "bomb").Output()
	if err != nil {
		t.Fatalf("tar: %v", err)
	}
	return out
}

// TestApplyHostile feeds Apply archives that try to escape the layer or
// break its format. Each ends with a clear error and nothing written (no
// layer, no temporary directory, nothing outside), or with the documented
// success.
func TestApplyHostile(t *testing.T) {
	deep := strings.Repeat("a/", 10000) + "f"
	tests := []struct {
		name    string
		tar     func(t testing.TB, outside string) []byte
		opt     ApplyOptions
		wantErr string                           // "" for success
		check   func(t *testing.T, layer string) // after a success
	}{
		{name: "absolute path", wantErr: `layer entry "/etc/x": absolute path`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile("/etc/x", 0o644, "x")) }},
		{name: "dotdot", wantErr: `layer entry "../x": path escapes the layer`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile("../x", 0o644, "x")) }},
		{name: "dotdot inside", wantErr: `layer entry "a/../../x": path escapes the layer`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile("a/../../x", 0o644, "x")) }},
		{name: "dotdot that stays inside", wantErr: `layer entry "a/../x": path escapes the layer`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apDir("a/", 0o755), apFile("a/../x", 0o644, "x")) }},
		{name: "symlink parent absolute", wantErr: `layer entry "a/x": parent "a" is a symlink`,
			tar: func(t testing.TB, outside string) []byte {
				return apTar(t, apSymlink("a", outside), apFile("a/x", 0o644, "x"))
			}},
		{name: "symlink parent dotdot", wantErr: `layer entry "a/x": parent "a" is a symlink`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apSymlink("a", ".."), apFile("a/x", 0o644, "x")) }},
		{name: "symlink parent deeper", wantErr: `layer entry "d/a/b/x": parent "d/a" is a symlink`,
			tar: func(t testing.TB, _ string) []byte {
				return apTar(t, apDir("d/", 0o755), apSymlink("d/a", "../.."), apFile("d/a/b/x", 0o644, "x"))
			}},
		{name: "symlink parent of a link", wantErr: `layer entry "a/x": parent "a" is a symlink`,
			tar: func(t testing.TB, _ string) []byte {
				return apTar(t, apFile("f", 0o644, "x"), apSymlink("a", ".."), apLink("a/x", "f"))
			}},
		{name: "symlink parent of a marker", wantErr: `layer entry "a/.wh.x": parent "a" is a symlink`,
			tar: func(t testing.TB, outside string) []byte {
				return apTar(t, apSymlink("a", outside), apWhiteout("a/x"))
			}},
		{name: "symlink opaque dir", wantErr: `layer entry "a/.wh..wh..opq": parent "a" is a symlink`,
			tar: func(t testing.TB, outside string) []byte {
				return apTar(t, apSymlink("a", outside), apFile("a/.wh..wh..opq", 0, ""))
			}},
		{name: "hard link absolute", wantErr: `layer entry "x": hard link target "/etc/passwd": absolute path`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apLink("x", "/etc/passwd")) }},
		{name: "hard link dotdot", wantErr: `layer entry "x": hard link target "../x": path escapes the layer`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apLink("x", "../x")) }},
		{name: "hard link forward", wantErr: `layer entry "x": hard link target "y" is not an earlier entry of the layer`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apLink("x", "y"), apFile("y", 0o644, "y")) }},
		{name: "hard link to a directory", wantErr: `layer entry "x": hard link target "d" is a directory`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apDir("d/", 0o755), apLink("x", "d")) }},
		{name: "hard link to an implied directory", wantErr: `layer entry "x": hard link target "d" is a directory`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile("d/f", 0o644, ""), apLink("x", "d")) }},
		{name: "hard link to a whiteout", wantErr: `layer entry "x": hard link target ".wh.y" is not an earlier entry`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apWhiteout("y"), apLink("x", ".wh.y")) }},
		{name: "bare whiteout", wantErr: `layer entry ".wh.": invalid whiteout name`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile(".wh.", 0, "")) }},
		{name: "whiteout of dot", wantErr: `layer entry "d/.wh..": invalid whiteout name`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile("d/.wh..", 0, "")) }},
		{name: "whiteout of dotdot", wantErr: `layer entry ".wh...": invalid whiteout name`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile(".wh...", 0, "")) }},
		{name: "whiteout with a slash", wantErr: `layer entry "a/.wh.b/c": parent ".wh.b" is a whiteout`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile("a/.wh.b/c", 0, "")) }},
		{name: "duplicate file", wantErr: `layer entry "./f": duplicate path in the layer`,
			tar: func(t testing.TB, _ string) []byte {
				return apTar(t, apFile("f", 0o644, "1"), apFile("./f", 0o644, "2"))
			}},
		{name: "duplicate dir", wantErr: `layer entry "d/": duplicate path in the layer`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apDir("d", 0o755), apDir("d/", 0o700)) }},
		{name: "duplicate whiteout", wantErr: `layer entry ".wh.x": duplicate path in the layer`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apWhiteout("x"), apWhiteout("x")) }},
		{name: "file over implied dir", wantErr: `layer entry "d": duplicate path in the layer`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile("d/f", 0o644, ""), apFile("d", 0o644, "")) }},
		{name: "file as parent", wantErr: `layer entry "f/g": parent "f" is not a directory`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile("f", 0o644, ""), apFile("f/g", 0o644, "")) }},
		{name: "root as a file", wantErr: `layer entry ".": the layer's root is not a directory`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile(".", 0o644, "")) }},
		{name: "whiteout device", wantErr: `layer entry "w": a 0/0 character device reads as an overlay whiteout`,
			tar: func(t testing.TB, _ string) []byte {
				return apTar(t, apEnt{Header: tar.Header{Typeflag: tar.TypeChar, Name: "w"}})
			}},
		{name: "unsupported type", wantErr: `layer entry "v": entry type 'Z' is not supported`,
			tar: func(t testing.TB, _ string) []byte {
				return apTar(t, apEnt{Header: tar.Header{Typeflag: 'Z', Name: "v"}})
			}},
		{name: "invalid owner", wantErr: `layer entry "f": invalid owner 4294967295:0`,
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apOwned(apFile("f", 0o644, ""), 1<<32-1, 0)) }},
		{name: "size larger than data", wantErr: `layer entry "big": read data: unexpected EOF`,
			tar: func(t testing.TB, _ string) []byte {
				b := apTar(t, apFile("f", 0o644, "ok"), apFile("big", 0o644, strings.Repeat("x", 5000)))
				return b[:512*3+1000] // f, big's header, part of big's data
			}},
		{name: "garbage after header", wantErr: `read layer tar after 1 entries: archive/tar: invalid tar header`,
			tar: func(t testing.TB, _ string) []byte {
				b := apTar(t, apFile("f", 0o644, ""))
				garbage := bytes.Repeat([]byte{0xa5}, 512)
				return append(append(b[:512:512], garbage...), make([]byte, 1024)...)
			}},
		{name: "NUL in name", wantErr: `read layer tar after 0 entries: archive/tar: invalid tar header`,
			tar: func(t testing.TB, _ string) []byte { return hostileNULName(t) }},
		{name: "deep path", wantErr: fmt.Sprintf("layer entry %q: path longer than 4095 bytes", deep),
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apFile(deep, 0o644, "x")) }},
		{name: "deep path as a link target", wantErr: "path longer than 4095 bytes",
			tar: func(t testing.TB, _ string) []byte { return apTar(t, apLink("x", deep)) }},
		{name: "device rootless",
			opt: ApplyOptions{Rootless: true},
			tar: func(t testing.TB, _ string) []byte {
				return apTar(t, apEnt{Header: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8}})
			},
			check: func(t *testing.T, layer string) {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(layer, "dev/sda"), &st); err != nil {
					t.Fatal(err)
				}
				if st.Mode != unix.S_IFREG|0o660 || st.Size != 0 {
					t.Errorf("dev/sda: mode %o size %d, want an empty placeholder 0660", st.Mode, st.Size)
				}
			}},
		{name: "sparse bomb",
			// Policy: a sparse entry gets its declared size, its holes
			// stay holes: disk use follows the data in the archive.
			tar: func(t testing.TB, _ string) []byte {
				b := hostileSparseBomb(t, 16<<30)
				if b == nil {
					t.Skip("needs GNU tar")
				}
				return b
			},
			check: func(t *testing.T, layer string) {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(layer, "bomb"), &st); err != nil {
					t.Fatal(err)
				}
				if st.Size != 16<<30 || st.Blocks*512 > 1<<20 {
					t.Errorf("bomb: size %d, %d bytes on disk; want 16 GiB declared, at most 1 MiB used", st.Size, st.Blocks*512)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			outside := filepath.Join(parent, "outside")
			if err := os.Mkdir(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			layer := filepath.Join(parent, "layer")
			b := tc.tar(t, outside)
			opt := tc.opt
			opt.Warn = func(string) {}
			_, err := Apply(bytes.NewReader(b), layer, opt)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				tc.check(t, layer)
			} else {
				if err == nil {
					t.Fatalf("Apply succeeded, want %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error %q spans lines", err)
				}
			}
			hostileNothingElse(t, parent, tc.wantErr == "")
		})
	}
}

// hostileNothingElse checks that parent holds only "outside", empty, and
// "layer" when withLayer.
func hostileNothingElse(t *testing.T, parent string, withLayer bool) {
	t.Helper()
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := "outside"
	if withLayer {
		want = "layer outside"
	}
	if got := strings.Join(names, " "); got != want {
		t.Errorf("parent holds %q, want %q", got, want)
	}
	if out, _ := os.ReadDir(filepath.Join(parent, "outside")); len(out) != 0 {
		t.Errorf("written outside: %v", out)
	}
}
