package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// LoadLayout brings into the store the named images of the OCI image
// layout directory dir (as umoci and skopeo's oci: transport write it),
// verifying them as Load does.
func (s *Store) LoadLayout(dir string) ([]*Image, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("load layout: %w", err)
	}
	defer root.Close()
	t, err := s.begin()
	if err != nil {
		return nil, err
	}
	defer t.close()
	l := t.newLoader(&layoutSource{root: root})
	if err := l.loadIndex(nil); err != nil {
		return nil, fmt.Errorf("load layout %s: %w", dir, err)
	}
	return l.publish()
}

// layoutSource reads an OCI layout directory; os.Root keeps every path,
// symlinks included, inside it.
type layoutSource struct {
	root *os.Root
}

func (l *layoutSource) has(name string) bool {
	_, err := l.root.Stat(name)
	return err == nil
}

func (l *layoutSource) readFile(name string) ([]byte, error) {
	f, err := l.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJSON+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxJSON {
		return nil, fmt.Errorf("%s: too large for a JSON document", name)
	}
	return data, nil
}

func (l *layoutSource) stageBlob(t *txn, desc v1.Descriptor) error {
	if err := checkDigest(desc.Digest); err != nil {
		return err
	}
	if _, ok := t.blobs[desc.Digest]; ok {
		return nil
	}
	f, err := l.root.Open(path.Join(v1.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded()))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("blob %s: missing", desc.Digest)
		}
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	defer f.Close()
	var progress func(int64)
	if p := t.s.Progress; p != nil {
		progress = func(n int64) { p(Progress{Op: "load", Item: desc.Digest.String(), Done: n, Total: desc.Size}) }
	}
	_, _, err = t.putBlob(f, &desc, progress)
	return err
}
