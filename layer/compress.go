package layer

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"fmt"
	"io"
)

// Magic numbers of the compressed forms a layer or a rootfs tarball may
// come in (RFC 1952 for gzip, RFC 8478 for zstd, the bzip2 and xz file
// formats).
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
	xzMagic   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
)

// Decompress returns the uncompressed stream of r, which may be gzip,
// bzip2 or plain (a tar), told apart by its first bytes. zstd and xz are
// refused with an error naming the format. Closing the result releases the
// decompressor but not r.
func Decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReader(r)
	// A short stream is plain: tar.Reader reports what is wrong with it.
	magic, err := br.Peek(10)
	if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
		return nil, fmt.Errorf("read compression magic: %w", err)
	}
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip stream: %w", err)
		}
		return zr, nil
	case isBzip2(magic):
		return io.NopCloser(bzip2.NewReader(br)), nil
	case bytes.HasPrefix(magic, zstdMagic):
		return nil, fmt.Errorf("zstd-compressed stream: zstd is not supported, decompress it first (zstd -d)")
	case bytes.HasPrefix(magic, xzMagic):
		return nil, fmt.Errorf("xz-compressed stream: xz is not supported, decompress it first (xz -d)")
	}
	return io.NopCloser(br), nil
}

// isBzip2 reports whether magic starts a bzip2 stream: "BZh", the block
// size digit, then the magic of a block or of the end of the stream. The
// whole ten bytes keep a tar whose first name starts with "BZh" plain.
func isBzip2(magic []byte) bool {
	if len(magic) < 10 || string(magic[:3]) != "BZh" || magic[3] < '1' || magic[3] > '9' {
		return false
	}
	m := magic[4:10]
	return bytes.Equal(m, []byte{0x31, 0x41, 0x59, 0x26, 0x53, 0x59}) ||
		bytes.Equal(m, []byte{0x17, 0x72, 0x45, 0x38, 0x50, 0x90})
}
