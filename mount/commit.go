package mount

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
	"github.com/unionmount/unionmount/layer"
	"github.com/unionmount/unionmount/store"
)

// LayerMeta is what unionmount records about a committed layer, next to
// it as WORK/layers/N.json.
type LayerMeta struct {
	// ID is the layer's diff_id: the sha256 of its canonical layer tar
	// (package layer), so the same changes committed twice get the same
	// ID.
	ID      string    `json:"id"`
	Message string    `json:"message,omitempty"`
	Author  string    `json:"author,omitempty"`
	Created time.Time `json:"created"`
	// Entries counts the layer's tar entries, whiteouts included; Files
	// its regular files and Size their bytes.
	Entries int   `json:"entries"`
	Files   int   `json:"files"`
	Size    int64 `json:"size"`
	// Held is how long writers waited for the commit.
	Held time.Duration `json:"held_ns"`
}

// CommitOptions describe a commit.
type CommitOptions struct {
	Message, Author string
	// Progress, when set, is called now and then while the layer is
	// hashed.
	Progress func(entries int, bytes int64)
}

// Committed is the outcome of a commit.
type Committed struct {
	// Dir is the new layer directory and Lowers the layers below it,
	// top-most first.
	Dir    string
	Lowers []string
	Meta   LayerMeta
}

// CommitMount commits the upper of the live unionmount mount on merged:
// its daemon freezes the upper into a new layer while the mount stays in
// use, then the layer is hashed here, without holding anyone up.
func CommitMount(merged string, o CommitOptions) (*Committed, error) {
	mp, err := findMount(merged)
	if err != nil {
		return nil, err
	}
	// Dirty pages of files mapped for writing reach the upper first.
	if f, err := os.Open(mp); err == nil {
		_ = unix.Syncfs(int(f.Fd()))
		f.Close()
	}
	resp, err := call(mp, request{Op: "commit"})
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", mp, err)
	}
	return describeCommit(*resp.Commit, o)
}

// CommitUpper commits an upper that is not mounted: the layer directory
// WORK/layers/N is made from it exactly as for a live mount, so the next
// mount of the same directories stacks it. Uppers written by kernel
// overlayfs or fuse-overlayfs work too: their markers are first rewritten
// in the kernel's encoding (cow.Stack.Normalize), so that the layer is one
// a kernel mounts. The upper must not be in use by a mount.
func CommitUpper(lowers []string, upper, work string, userXattr bool, o CommitOptions) (*Committed, error) {
	opts := &Options{Lowers: lowers, Upper: upper, Work: work, UserXattr: userXattr}
	if err := opts.validateDirs(); err != nil {
		return nil, err
	}
	if err := os.Mkdir(opts.Work, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create workdir: %w", err)
	}
	st, err := cow.Open(cow.Config{Lowers: opts.Lowers, Upper: opts.Upper, Work: opts.Work, UserXattr: opts.UserXattr})
	if err != nil {
		return nil, fmt.Errorf("open layers: %w", err)
	}
	if _, err := st.Normalize(); err != nil {
		st.Close()
		return nil, err
	}
	if _, err := st.MaterializeIndex(); err != nil {
		st.Close()
		return nil, err
	}
	c, err := st.Commit(nil)
	st.Close()
	if err != nil {
		return nil, err
	}
	return describeCommit(c, o)
}

// describeCommit hashes the new layer and records its metadata.
func describeCommit(c cow.Committed, o CommitOptions) (*Committed, error) {
	epoch, err := store.SourceDateEpoch()
	if err != nil {
		return nil, fmt.Errorf("committed as %s, but not hashed: %w", c.Dir, err)
	}
	h := sha256.New()
	stats, err := layer.Write(h, c.Dir, c.Lowers, layer.Options{Epoch: epoch, Progress: o.Progress})
	if err != nil {
		return nil, fmt.Errorf("committed as %s, but hashing it failed: %w", c.Dir, err)
	}
	created := time.Now().UTC().Truncate(time.Second)
	if epoch != nil {
		created = *epoch
	}
	m := LayerMeta{
		ID:      "sha256:" + hex.EncodeToString(h.Sum(nil)),
		Message: o.Message,
		Author:  o.Author,
		Created: created,
		Entries: stats.Entries,
		Files:   stats.Files,
		Size:    stats.Bytes,
		Held:    c.Held,
	}
	if err := writeMeta(c.Dir, m); err != nil {
		return nil, fmt.Errorf("committed as %s, but recording it failed: %w", c.Dir, err)
	}
	return &Committed{Dir: c.Dir, Lowers: c.Lowers, Meta: m}, nil
}

// metaPath names the metadata file of the committed layer dir.
func metaPath(dir string) string { return dir + ".json" }

func writeMeta(dir string, m LayerMeta) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := metaPath(dir) + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	if f, err := os.Open(tmp); err == nil {
		_ = f.Sync()
		f.Close()
	}
	return os.Rename(tmp, metaPath(dir))
}

// readMeta reads the metadata of a committed layer; ok is false when it
// has none (a commit interrupted before it was hashed).
func readMeta(dir string) (m LayerMeta, ok bool) {
	data, err := os.ReadFile(metaPath(dir))
	if err != nil || json.Unmarshal(data, &m) != nil {
		return m, false
	}
	return m, true
}

// findMount resolves path to the mount point of a unionmount mount.
func findMount(path string) (string, error) {
	p, err := resolveParent(path)
	if err != nil {
		return "", describe(roleMountpoint, path, err)
	}
	m, ok, err := lookupMount(p)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("%s is not a mount point", p)
	}
	if m.fsType != FSType {
		return "", fmt.Errorf("%s is not a unionmount mount but %s from %s", p, m.fsType, m.source)
	}
	return p, nil
}

// MountInfo asks the daemon of the unionmount mount on merged about it.
func MountInfo(merged string) (*Info, error) {
	mp, err := findMount(merged)
	if err != nil {
		return nil, err
	}
	resp, err := call(mp, request{Op: "info"})
	if err != nil {
		return nil, err
	}
	return resp.Info, nil
}

// Which tells where a path inside a unionmount mount comes from.
func Which(path string) (*cow.Source, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	mp, rel, err := enclosingMount(abs)
	if err != nil {
		return nil, err
	}
	resp, err := call(mp, request{Op: "which", Path: rel})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return resp.Which, nil
}

// enclosingMount finds the unionmount mount that path is in, without
// resolving path's last names (they may be hidden in the merged view),
// and returns its mount point and path relative to it.
func enclosingMount(abs string) (mp, rel string, err error) {
	for dir := abs; ; dir = filepath.Dir(dir) {
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			if m, ok, _ := lookupMount(real); ok && m.fsType == FSType {
				r, _ := filepath.Rel(dir, abs)
				if r == "." {
					r = ""
				}
				return real, r, nil
			}
		}
		if dir == "/" {
			return "", "", fmt.Errorf("%s is not inside a unionmount mount", abs)
		}
	}
}

// Layer is one layer of a stack as ListLayers describes it.
type Layer struct {
	// Role is "upper", "committed", "image" (a layer of the mount's
	// image) or "lower".
	Role string
	Dir  string
	// Meta is set for committed layers that were hashed; a lower's
	// Files and Size are counted.
	Meta LayerMeta
}

// ListLayers lists the layers of the live unionmount mount on merged,
// top-most first.
func ListLayers(merged string) ([]Layer, error) {
	in, err := MountInfo(merged)
	if err != nil {
		return nil, err
	}
	var out []Layer
	if in.Upper != "" {
		out = append(out, countLayer("upper", in.Upper))
	}
	for i, d := range in.Lowers {
		if i < in.Committed {
			if m, ok := readMeta(d); ok {
				out = append(out, Layer{Role: "committed", Dir: d, Meta: m})
				continue
			}
			out = append(out, countLayer("committed", d))
			continue
		}
		l := countLayer("lower", d)
		if in.Store != "" && filepath.Dir(d) == filepath.Join(in.Store, "layers") {
			// An image's layer, unpacked in the store under its
			// diff_id.
			l.Role, l.Meta.ID = "image", "sha256:"+filepath.Base(d)
		}
		out = append(out, l)
	}
	return out, nil
}

// countLayer describes a layer directory by walking it: its files, their
// bytes, and its directory's mtime as its creation time.
func countLayer(role, dir string) Layer {
	l := Layer{Role: role, Dir: dir}
	if fi, err := os.Stat(dir); err == nil {
		l.Meta.Created = fi.ModTime().UTC().Truncate(time.Second)
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.HasPrefix(d.Name(), cow.OCIWhiteoutPrefix) {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			l.Meta.Files++
			l.Meta.Size += fi.Size()
		}
		return nil
	})
	return l
}
