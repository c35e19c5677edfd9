package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// Names of the store's own entries next to the OCI layout.
const (
	layersDir     = "layers"
	stagingDir    = "staging"
	lockFile      = "lock"
	containersDir = "containers"
)

// maxJSON bounds every JSON document read from an archive, a layout or the
// store: real manifests and configs are a few KiB, an index a few MiB at
// most.
const maxJSON = 16 << 20

// Store is an open image store. Its methods may be called from several
// goroutines and processes at once.
type Store struct {
	dir string
	// Progress, when set, receives reports of long work (load, import,
	// save, export, commit, unpacking layers).
	Progress func(Progress)
	// Warn, when set, receives one line per thing left out or changed
	// while unpacking a layer (such as a device node made a placeholder).
	Warn func(msg string)
}

// Progress reports how far a long operation has come.
type Progress struct {
	// Op names the work: "load", "import", "save", "export", "commit",
	// "unpack", "verify".
	Op string
	// Item names what is being worked on: a layer digest, a file name.
	Item string
	// Done counts bytes done, Total the bytes expected (0 if unknown).
	Done, Total int64
}

// DefaultDir returns the store used when none is named: $UNIONMOUNT_STORE;
// else, as root, /var/lib/unionmount; else $XDG_DATA_HOME/unionmount or
// ~/.local/share/unionmount.
func DefaultDir() string {
	if d := os.Getenv("UNIONMOUNT_STORE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/unionmount"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "unionmount")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = "/"
	}
	return filepath.Join(home, ".local", "share", "unionmount")
}

// Open opens the store in dir, creating the layout if dir is missing or
// empty, and cleans up after transactions that died. It refuses a
// directory that holds something other than an image layout. A store the
// caller cannot write is opened for reading only.
func Open(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	s := &Store{dir: abs}
	if err := s.init(); err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	if err := s.recover(); err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

func (s *Store) blobPath(d digest.Digest) string {
	return s.path(v1.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// layerPath returns the unpacked layer directory of a diff_id.
func (s *Store) layerPath(diffID digest.Digest) string {
	return s.path(layersDir, diffID.Encoded())
}

// init creates the layout in a missing or empty directory and checks an
// existing one.
func (s *Store) init() error {
	layout, err := os.ReadFile(s.path(v1.ImageLayoutFile))
	switch {
	case err == nil:
		var l v1.ImageLayout
		if err := json.Unmarshal(layout, &l); err != nil || l.Version != v1.ImageLayoutVersion {
			return fmt.Errorf("%s: not an OCI image layout version %s", v1.ImageLayoutFile, v1.ImageLayoutVersion)
		}
		if _, err := os.Stat(s.path(v1.ImageIndexFile)); err != nil {
			return fmt.Errorf("not an OCI image layout: %w", err)
		}
		// Directories a layout written by another tool lacks.
		for _, d := range []string{filepath.Join(v1.ImageBlobsDir, "sha256"), layersDir, stagingDir} {
			if err := os.MkdirAll(s.path(d), 0o755); err != nil && !isReadOnly(err) {
				return err
			}
		}
		return nil
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if len(entries) > 0 {
		return fmt.Errorf("not empty and not an OCI image layout (no %s)", v1.ImageLayoutFile)
	}
	for _, d := range []string{filepath.Join(v1.ImageBlobsDir, "sha256"), layersDir, stagingDir} {
		if err := os.MkdirAll(s.path(d), 0o755); err != nil {
			return err
		}
	}
	idx, err := json.Marshal(v1.Index{Versioned: specsVersioned, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{}})
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.path(v1.ImageIndexFile), idx); err != nil {
		return err
	}
	// oci-layout last: its presence says the layout is complete.
	l, err := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
	if err != nil {
		return err
	}
	return writeFileAtomic(s.path(v1.ImageLayoutFile), l)
}

// isReadOnly reports whether err says that the store cannot be written.
func isReadOnly(err error) bool {
	return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EROFS)
}

// lock takes the store lock; the returned function releases it.
func (s *Store) lock() (func(), error) {
	f, err := os.OpenFile(s.path(lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("store lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// recover removes the staging directories of dead transactions, and the
// blobs and layers that a transaction killed while publishing moved into
// place but no image references.
func (s *Store) recover() error {
	unlock, err := s.lock()
	if err != nil {
		if isReadOnly(err) {
			return nil
		}
		return err
	}
	defer unlock()
	entries, err := os.ReadDir(s.path(stagingDir))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		dir := s.path(stagingDir, e.Name())
		if alive(dir) {
			continue
		}
		if err := s.undoJournal(dir); err != nil {
			return fmt.Errorf("recover %s: %w", dir, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove staging leftovers: %w", err)
		}
	}
	return nil
}

// alive reports whether the transaction in staging directory dir still
// holds its lock.
func alive(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	return false
}

// undoJournal removes what the dead transaction in dir moved into the
// store, unless an image references it now.
//
// Preconditions: the store lock is held.
func (s *Store) undoJournal(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, journalFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	refs, err := s.references()
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(data), "\n") {
		kind, d, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		dg, err := digest.Parse(d)
		if err != nil {
			continue
		}
		switch kind {
		case "blob":
			if !refs.blobs[dg] {
				if err := os.Remove(s.blobPath(dg)); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
		case "layer":
			if !refs.layers[dg] {
				if err := s.removeLayerDir(dg); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// removeLayerDir deletes an unpacked layer: renamed into staging first, so
// that a half-deleted layer never shows under its name.
func (s *Store) removeLayerDir(diffID digest.Digest) error {
	trash := s.path(stagingDir, "trash-"+diffID.Encoded()+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.Rename(s.layerPath(diffID), trash); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove layer %s: %w", diffID, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("remove layer %s: %w", diffID, err)
	}
	return nil
}

// writeFileAtomic replaces the file at name with data: written to a
// temporary file beside it, synced, renamed, and the directory synced.
func writeFileAtomic(name string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	return syncDir(filepath.Dir(name))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// readJSON decodes the JSON file name into v, refusing one larger than
// maxJSON.
func readJSON(name string, v any) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJSON+1))
	if err != nil {
		return err
	}
	if len(data) > maxJSON {
		return fmt.Errorf("%s: larger than %d bytes", filepath.Base(name), maxJSON)
	}
	return json.Unmarshal(data, v)
}
