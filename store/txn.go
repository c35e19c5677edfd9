package store

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// journalFile, in a transaction's staging directory, lists what the
// transaction is moving into the store: "blob DIGEST" and "layer DIFFID"
// lines.
const journalFile = "journal"

// txn is a transaction: a staging directory in which new blobs and
// unpacked layers are prepared, then published into the store at once.
type txn struct {
	s    *Store
	dir  string
	lock *os.File
	n    int
	// blobs and layers map what was staged to its path in dir.
	blobs  map[digest.Digest]string
	layers map[digest.Digest]string
}

// begin starts a transaction.
func (s *Store) begin() (*txn, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Created under the store lock, so that recover never sees a
	// transaction directory before its lock is taken.
	dir, err := os.MkdirTemp(s.path(stagingDir), "txn-")
	if err != nil {
		return nil, fmt.Errorf("staging: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		os.RemoveAll(dir)
		return nil, fmt.Errorf("staging: %w", err)
	}
	return &txn{s: s, dir: dir, lock: f, blobs: map[digest.Digest]string{}, layers: map[digest.Digest]string{}}, nil
}

// close ends the transaction, removing whatever is left in its staging
// directory.
func (t *txn) close() {
	// Best effort: Open removes what is left.
	_ = os.RemoveAll(t.dir)
	t.lock.Close()
}

// tempPath returns a fresh name in the staging directory.
func (t *txn) tempPath(prefix string) string {
	t.n++
	return filepath.Join(t.dir, prefix+strconv.Itoa(t.n))
}

// hasBlob reports whether the blob d is in the store or staged.
func (t *txn) hasBlob(d digest.Digest) bool {
	if _, ok := t.blobs[d]; ok {
		return true
	}
	_, err := os.Lstat(t.s.blobPath(d))
	return err == nil
}

// blobReader opens the blob d, staged or in the store.
func (t *txn) blobReader(d digest.Digest) (*os.File, error) {
	if p, ok := t.blobs[d]; ok {
		return os.Open(p)
	}
	return os.Open(t.s.blobPath(d))
}

// putBlob stages the bytes of r as a blob and returns its digest and size.
// A non-nil want is checked: the digest and size must match.
func (t *txn) putBlob(r io.Reader, want *v1.Descriptor, progress func(int64)) (digest.Digest, int64, error) {
	p := t.tempPath("blob-")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("staging: %w", err)
	}
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	src := r
	if want != nil {
		// One byte past the size tells a longer blob.
		src = io.LimitReader(r, want.Size+1)
	}
	n, err := copyProgress(bw, src, progress)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return "", 0, fmt.Errorf("staging blob: %w", err)
	}
	d := digest.NewDigest(digest.SHA256, h)
	if want != nil {
		if n != want.Size {
			os.Remove(p)
			return "", 0, fmt.Errorf("blob %s: size %d, descriptor says %d", want.Digest, n, want.Size)
		}
		if d != want.Digest {
			os.Remove(p)
			return "", 0, fmt.Errorf("blob %s: content has digest %s", want.Digest, d)
		}
	}
	if _, ok := t.blobs[d]; ok {
		os.Remove(p)
	} else {
		t.blobs[d] = p
	}
	return d, n, nil
}

// putBlobBytes stages a small blob.
func (t *txn) putBlobBytes(data []byte) (digest.Digest, error) {
	d := digest.FromBytes(data)
	if t.hasBlob(d) {
		return d, nil
	}
	d2, _, err := t.putBlob(strings.NewReader(string(data)), nil, nil)
	return d2, err
}

// publish moves the staged blobs and layers into the store and then, if
// update is not nil, applies update to the index and writes it. need lists
// blobs that must be in the store for the new index to be valid (those of
// a parent image, which a concurrent rmi may have removed).
func (t *txn) publish(need []digest.Digest, update func(idx *v1.Index) error) error {
	s := t.s
	// Everything staged reaches the disk before any of it gets its name.
	if err := syncfs(t.dir); err != nil {
		return fmt.Errorf("sync staging: %w", err)
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	for _, d := range need {
		if !t.hasBlob(d) {
			return fmt.Errorf("blob %s is gone from the store (removed meanwhile?)", d)
		}
	}
	type move struct{ from, to, entry string }
	var moves []move
	for d, p := range t.blobs {
		if _, err := os.Lstat(s.blobPath(d)); err == nil {
			continue
		}
		moves = append(moves, move{p, s.blobPath(d), "blob " + d.String()})
	}
	for d, p := range t.layers {
		if _, err := os.Lstat(s.layerPath(d)); err == nil {
			continue
		}
		moves = append(moves, move{p, s.layerPath(d), "layer " + d.String()})
	}
	if len(moves) > 0 {
		var j strings.Builder
		for _, m := range moves {
			j.WriteString(m.entry + "\n")
		}
		if err := writeFileAtomic(filepath.Join(t.dir, journalFile), []byte(j.String())); err != nil {
			return fmt.Errorf("write journal: %w", err)
		}
		for _, m := range moves {
			if err := os.Rename(m.from, m.to); err != nil {
				return fmt.Errorf("publish %s: %w", m.entry, err)
			}
		}
		for _, d := range []string{s.path(v1.ImageBlobsDir, "sha256"), s.path(layersDir)} {
			if err := syncDir(d); err != nil {
				return fmt.Errorf("sync %s: %w", d, err)
			}
		}
	}
	if update != nil {
		idx, err := s.readIndex()
		if err != nil {
			return err
		}
		if err := update(idx); err != nil {
			return err
		}
		if err := s.writeIndex(idx); err != nil {
			return err
		}
	}
	// Published: the journal must not undo it.
	if err := os.Remove(filepath.Join(t.dir, journalFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove journal: %w", err)
	}
	t.blobs = map[digest.Digest]string{}
	t.layers = map[digest.Digest]string{}
	return nil
}

// syncfs flushes the filesystem holding path.
func syncfs(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// copyProgress copies src to dst, calling progress (if set) with the bytes
// done so far every few MiB.
func copyProgress(dst io.Writer, src io.Reader, progress func(int64)) (int64, error) {
	if progress == nil {
		return io.Copy(dst, src)
	}
	buf := make([]byte, 1<<20)
	var n, last int64
	for {
		k, rerr := src.Read(buf)
		if k > 0 {
			if _, err := dst.Write(buf[:k]); err != nil {
				return n, err
			}
			n += int64(k)
			if n-last >= 4<<20 {
				progress(n)
				last = n
			}
		}
		if rerr == io.EOF {
			progress(n)
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}
