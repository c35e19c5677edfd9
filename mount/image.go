package mount

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/store"
)

// Mounting an image: "unionmount --image NAME [UPPER] MERGED" mounts the
// image's layers, unpacked in the store, as the lowers. Every image mount
// has a directory STORE/containers/ID whose file "layers" lists the
// diff_ids of the layers it uses, so that removing the image meanwhile
// keeps them; it is written before the layers are unpacked. Without an
// UPPER the mount gets a fresh container layer there too,
// STORE/containers/ID/upper with its workdir beside it, which outlives the
// mount; otherwise the directory goes when the mount does.

const containersDir = "containers"

// containerEnv passes the container directory that the command made to
// the daemon it starts, which parses the same command line.
const containerEnv = "_UNIONMOUNT_CONTAINER"

// resolveImage replaces o.Image by its layers in o.Lowers and, without an
// upper, creates the container layer.
func (o *Options) resolveImage() error {
	if o.Image == "" {
		return nil
	}
	if len(o.Lowers) > 0 {
		return fmt.Errorf("--image %s and lower directories given together", o.Image)
	}
	if o.Store == "" {
		o.Store = store.DefaultDir()
	}
	s, err := store.Open(o.Store)
	if err != nil {
		return err
	}
	img, err := s.Image(o.Image)
	if err != nil {
		return err
	}
	// A container's upper mounted again is that container: it keeps its
	// workdir, where its committed layers are, and its lock.
	dir := os.Getenv(containerEnv)
	again := false
	if up, err := filepath.Abs(o.Upper); o.Upper != "" && err == nil && filepath.Base(up) == "upper" &&
		filepath.Dir(filepath.Dir(up)) == filepath.Join(s.Dir(), containersDir) {
		dir, again = filepath.Dir(up), true
		if o.Work == "" {
			o.Work = filepath.Join(dir, "work")
		}
		if err := recordContainer(dir, img); err != nil {
			return err
		}
	}
	withUpper := o.Upper == "" && !o.ReadOnly
	if dir == "" {
		if dir, err = newContainer(o.Store, img, withUpper); err != nil {
			return err
		}
		os.Setenv(containerEnv, dir)
		if withUpper {
			fmt.Fprintf(os.Stderr, "unionmount: container layer %s\n", filepath.Join(dir, "upper"))
		}
	}
	o.containerDir = dir
	if !withUpper && !again {
		o.container = dir
	}
	lowers, err := s.Lowers(img, o.UserXattr)
	if err != nil {
		return err
	}
	if len(lowers) == 0 {
		// An image without layers is an empty directory.
		empty := filepath.Join(dir, "empty")
		if err := os.MkdirAll(empty, 0o755); err != nil {
			return err
		}
		lowers = []string{empty}
	}
	o.Lowers = lowers
	if withUpper {
		o.Upper = filepath.Join(dir, "upper")
		o.Work = filepath.Join(dir, "work")
	}
	return nil
}

// newContainer makes STORE/containers/ID, with an empty upper if
// withUpper, and records the image and its layers there.
func newContainer(storeDir string, img *store.Image, withUpper bool) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	dir := filepath.Join(storeDir, containersDir, hex.EncodeToString(b[:]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create container: %w", err)
	}
	if withUpper {
		if err := os.Mkdir(filepath.Join(dir, "upper"), 0o755); err != nil {
			return "", fmt.Errorf("create container layer: %w", err)
		}
	}
	if err := recordContainer(dir, img); err != nil {
		return "", err
	}
	return dir, nil
}

// CommitImage commits the live mount on merged (as CommitMount) and
// stores the result as the image tag in its store (or storeDir, for a
// mount of plain directories): the mount's image, if it has one, plus its
// committed layers; a mount of plain directories gets one layer per lower
// directory, bottom-up, then the committed ones. Layers the store has
// already are shared, not copied.
func CommitImage(merged, tag, storeDir string, o CommitOptions) (*Committed, *store.Image, error) {
	c, err := CommitMount(merged, o)
	if err != nil {
		return nil, nil, err
	}
	in, err := MountInfo(merged)
	if err != nil {
		return c, nil, err
	}
	if in.Store != "" {
		storeDir = in.Store
	}
	if storeDir == "" {
		storeDir = store.DefaultDir()
	}
	s, err := store.Open(storeDir)
	if err != nil {
		return c, nil, err
	}
	var parent *store.Image
	var base int // lowers[base:] are in parent
	if in.Image != "" {
		if parent, err = s.Image(in.Image); err != nil {
			return c, nil, fmt.Errorf("the mount's image: %w", err)
		}
		base = in.Committed
	} else {
		base = len(in.Lowers)
	}
	epoch, err := store.SourceDateEpoch()
	if err != nil {
		return c, nil, err
	}
	created := time.Now().UTC().Truncate(time.Second)
	if epoch != nil {
		created = *epoch
	}
	var layers []store.NewLayer
	for i := base - 1; i >= 0; i-- {
		dir := in.Lowers[i]
		nl := store.NewLayer{Dir: dir, Lowers: in.Lowers[i+1:], Created: created, Author: o.Author}
		if i < in.Committed {
			m, _ := readMeta(dir)
			nl.Comment, nl.Created = m.Message, m.Created
			nl.CreatedBy = "unionmount commit"
			if m.Author != "" {
				nl.Author = m.Author
			}
		} else {
			nl.CreatedBy = "unionmount commit: lower directory " + dir
		}
		layers = append(layers, nl)
	}
	if len(layers) == 0 {
		return c, nil, errors.New("nothing to store")
	}
	img, err := s.Commit(parent, layers, tag)
	if err != nil {
		return c, nil, err
	}
	return c, img, nil
}

// recordContainer writes which image the container dir is mounted on and
// the diff_ids of its layers, which Remove keeps.
func recordContainer(dir string, img *store.Image) error {
	var ids []string
	for _, d := range img.DiffIDs() {
		ids = append(ids, d.Encoded())
	}
	info := fmt.Sprintf("image %s\ncreated %s\n", img.Name, time.Now().UTC().Format(time.RFC3339))
	if data, err := os.ReadFile(filepath.Join(dir, "image")); err == nil {
		// Mounted again: it was created when it was first made.
		if i := strings.Index(string(data), "created "); i >= 0 {
			info = fmt.Sprintf("image %s\n%s", img.Name, data[i:])
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "image"), []byte(info), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "layers"), []byte(strings.Join(ids, "\n")+"\n"), 0o644)
}

// Container is an image mount's directory in the store.
type Container struct {
	ID, Dir string
	// Image is the name of the image it was made from.
	Image   string
	Created time.Time
	// Upper is set when it holds a container layer (Dir/upper).
	Upper bool
	// Mounted is set while a mount uses it.
	Mounted bool
}

// lockContainer takes the lock that a mount holds on its container
// directory for as long as its daemon lives. It returns nil, false when
// another process holds it.
func lockContainer(dir string) (*os.File, bool, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return f, true, nil
}

// Containers lists the container directories of the store in storeDir.
func Containers(storeDir string) ([]Container, error) {
	ents, err := os.ReadDir(filepath.Join(storeDir, containersDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Container
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		c := Container{ID: e.Name(), Dir: filepath.Join(storeDir, containersDir, e.Name())}
		data, err := os.ReadFile(filepath.Join(c.Dir, "image"))
		if err != nil {
			continue // not a container (an image without layers' empty dir)
		}
		for _, line := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(line, " ")
			switch k {
			case "image":
				c.Image = v
			case "created":
				c.Created, _ = time.Parse(time.RFC3339, v)
			}
		}
		if _, err := os.Stat(filepath.Join(c.Dir, "upper")); err == nil {
			c.Upper = true
		}
		if f, ok, err := lockContainer(c.Dir); err == nil {
			c.Mounted = !ok
			if f != nil {
				f.Close()
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// RemoveContainer deletes the container id of the store in storeDir, its
// container layer and committed layers with it; one in use by a mount is
// refused.
func RemoveContainer(storeDir, id string) error {
	if id == "" || strings.ContainsAny(id, "/.") {
		return fmt.Errorf("%q is not a container id", id)
	}
	dir := filepath.Join(storeDir, containersDir, id)
	if _, err := os.Stat(filepath.Join(dir, "image")); err != nil {
		return fmt.Errorf("no container %s in %s", id, storeDir)
	}
	f, ok, err := lockContainer(dir)
	if err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	if !ok {
		return fmt.Errorf("container %s is mounted; unmount it first", id)
	}
	defer f.Close()
	// Out of sight first, so that a crash halfway leaves no half container.
	trash := filepath.Join(storeDir, containersDir, ".removing-"+id)
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	return os.RemoveAll(trash)
}
