package layer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzSeeds are tars for the fuzzers to start from: valid layers and the
// hostile shapes of TestApplyHostile.
func fuzzSeeds(t testing.TB) [][]byte {
	seeds := [][]byte{
		apTar(t,
			apDir("etc/", 0o755), apFile("etc/passwd", 0o644, "root:x:0:0\n"), apWhiteout("etc/shadow"),
			apDir("opq/", 0o750), apFile("opq/.wh..wh..opq", 0, ""), apWhiteout("opq/old"), apFile("opq/new", 0o600, "n"),
			apXattrs(apFile("bin/ping", 0o4755, "ELF"), "security.capability", "\x01\x00\x00\x02", "user.x", "y"),
			apLink("bin/ping2", "bin/ping"), apSymlink("bin/sh", "/bin/busybox"),
			apEnt{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
			apEnt{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o620}},
		),
		apTar(t),
		apTar(t, apFile("../x", 0o644, "x")),
		apTar(t, apSymlink("a", ".."), apFile("a/x", 0o644, "x")),
		apTar(t, apSymlink("a", "/tmp"), apWhiteout("a/x")),
		apTar(t, apLink("x", "y"), apFile("y", 0o644, "y")),
		apTar(t, apDir("d/", 0o755), apLink("x", "d")),
		apTar(t, apFile(".wh.", 0, ""), apFile(".wh..", 0, ""), apFile(".wh...", 0, "")),
		apTar(t, apFile("f", 0o644, "1"), apFile("./f", 0o644, "2")),
		apTar(t, apWhiteout("gone"), apWhiteout("gone/inner"), apFile("same", 0o644, ""), apWhiteout("same")),
		apTar(t, apFile("f", 0o644, strings.Repeat("x", 1000)))[:1200],
		hostileNULName(t),
	}
	if sparse := hostileSparseBomb(t, 1<<20); sparse != nil {
		seeds = append(seeds, sparse)
	}
	return seeds
}

// fuzzTooBig reports whether the tar b declares an entry larger than the
// fuzzer should spend time expanding (a sparse entry can declare any size).
func fuzzTooBig(b []byte) bool {
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err != nil {
			return false
		}
		if hdr.Size > 64<<20 {
			return true
		}
	}
}

// FuzzApply applies arbitrary bytes as a layer tar: Apply must not panic,
// and must either succeed, leaving the layer, or fail leaving nothing.
func FuzzApply(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, b []byte, rootless bool) {
		if fuzzTooBig(b) {
			t.Skip("declares a huge entry")
		}
		parent := t.TempDir()
		outside := filepath.Join(parent, "outside")
		if err := os.Mkdir(outside, 0o755); err != nil {
			t.Fatal(err)
		}
		layer := filepath.Join(parent, "layer")
		_, err := Apply(bytes.NewReader(b), layer, ApplyOptions{Rootless: rootless, UserXattr: rootless, Warn: func(string) {}})
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("error %q spans lines", err)
		}
		hostileNothingElse(t, parent, err == nil)
		if err == nil {
			if rerr := applyRemoveTree(layer); rerr != nil {
				t.Fatal(rerr)
			}
		}
	})
}

// FuzzDecompress decompresses arbitrary bytes: no panic, and a stream
// that starts like gzip is either gzip or an error.
func FuzzDecompress(f *testing.F) {
	for _, s := range fuzzSeeds(f)[:3] {
		f.Add(s)
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(s)
		zw.Close()
		f.Add(gz.Bytes())
	}
	f.Add([]byte("BZh91AY&SY"))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Add([]byte{0xfd, '7', 'z', 'X', 'Z', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		rc, err := Decompress(bytes.NewReader(b))
		if err != nil {
			return
		}
		defer rc.Close()
		// Bound what a small bomb may expand to.
		n, err := io.Copy(io.Discard, io.LimitReader(rc, 16<<20))
		if err == nil && n == 16<<20 {
			return
		}
		if err == nil && !bytes.HasPrefix(b, gzipMagic) && !isBzip2(b) && int(n) != len(b) {
			t.Errorf("plain stream of %d bytes read as %d", len(b), n)
		}
	})
}
