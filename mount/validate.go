package mount

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// role names a directory's part in the union, for error messages.
type role string

const (
	roleLower      role = "lower"
	roleUpper      role = "upper"
	roleWork       role = "workdir"
	roleMountpoint role = "mount point"
)

// DefaultWork is the workdir used when none is given: the hidden sibling
// DIR/.NAME.work of the upper DIR/NAME, so that it is on the upper's
// filesystem and outside the upper.
func DefaultWork(upper string) string {
	return filepath.Join(filepath.Dir(upper), "."+filepath.Base(upper)+".work")
}

// Validate checks o without writing anything and replaces its paths by
// their absolute, symlink-free form. It fills in DefaultWork when the
// workdir was left out; the workdir is created only by Mount. On a
// read-only mount the upper becomes the top-most lower and the workdir is
// dropped.
func (o *Options) Validate() error {
	if len(o.Lowers) == 0 {
		return errors.New("no lower directory")
	}
	if len(o.Lowers) > MaxLowers {
		return fmt.Errorf("too many lower directories: %d, at most %d", len(o.Lowers), MaxLowers)
	}
	if o.Upper == "" && o.Work != "" {
		return fmt.Errorf("workdir %s given without an upper directory", o.Work)
	}
	if o.Log != "" {
		p, err := filepath.Abs(o.Log)
		if err != nil {
			return fmt.Errorf("log file %s: %w", o.Log, err)
		}
		o.Log = p
	}
	if o.ReadOnly && o.Upper != "" {
		o.Lowers = append([]string{o.Upper}, o.Lowers...)
		o.Upper, o.Work = "", ""
	}
	return o.checkDirs(true)
}

// validateDirs is Validate for an upper that is committed offline: no
// mount point.
func (o *Options) validateDirs() error {
	if len(o.Lowers) == 0 {
		return errors.New("no lower directory")
	}
	if o.Upper == "" {
		return errors.New("no upper directory")
	}
	return o.checkDirs(false)
}

// checkDirs resolves and checks the directories of o, and the mount point
// if withMountpoint.
func (o *Options) checkDirs(withMountpoint bool) error {
	type dir struct {
		role role
		path string
	}
	var dirs []dir
	for i, l := range o.Lowers {
		p, err := resolveDir(roleLower, l)
		if err != nil {
			return err
		}
		o.Lowers[i] = p
		dirs = append(dirs, dir{roleLower, p})
	}
	if o.Upper != "" {
		p, err := resolveDir(roleUpper, o.Upper)
		if err != nil {
			return err
		}
		if err := unix.Access(p, unix.W_OK); err != nil {
			return fmt.Errorf("upper %s is not writable: %w", p, err)
		}
		o.Upper = p
		dirs = append(dirs, dir{roleUpper, p})
	}
	if withMountpoint {
		mp, err := resolveMountpoint(o.Mountpoint)
		if err != nil {
			return err
		}
		o.Mountpoint = mp
		dirs = append(dirs, dir{roleMountpoint, mp})
	}
	if o.Upper != "" {
		if o.Work == "" {
			o.Work = DefaultWork(o.Upper)
		}
		w, err := resolveWork(o.Work, o.Upper)
		if err != nil {
			return err
		}
		o.Work = w
		dirs = append(dirs, dir{roleWork, w})
	}

	for i, a := range dirs {
		for _, b := range dirs[i+1:] {
			switch {
			case a.path == b.path:
				return fmt.Errorf("%s is given twice, as %s and as %s", a.path, a.role, b.role)
			case a.role == roleLower && b.role == roleLower:
				// Nested lowers are fine: both are only read.
			case inside(a.path, b.path):
				return fmt.Errorf("%s %s is inside %s %s", a.role, a.path, b.role, b.path)
			case inside(b.path, a.path):
				return fmt.Errorf("%s %s is inside %s %s", b.role, b.path, a.role, a.path)
			}
		}
	}
	return nil
}

// inside reports whether path is strictly below dir; both are clean and
// absolute.
func inside(path, dir string) bool {
	if dir == "/" {
		return path != "/"
	}
	return strings.HasPrefix(path, dir+"/")
}

// resolveDir returns the absolute, symlink-free form of an existing
// directory.
func resolveDir(r role, path string) (string, error) {
	p, err := resolve(path)
	if err != nil {
		return "", describe(r, path, err)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", describe(r, path, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s %s is not a directory", r, path)
	}
	return p, nil
}

// resolveMountpoint is resolveDir for the mount point, which must not
// already hold a unionmount mount. It checks the mount table before
// stat'ing, because a mount whose daemon died fails stat with ENOTCONN.
func resolveMountpoint(path string) (string, error) {
	p, err := resolveParent(path)
	if err != nil {
		return "", describe(roleMountpoint, path, err)
	}
	m, ok, err := lookupMount(p)
	if err != nil {
		return "", err
	}
	if ok && m.fsType == FSType {
		return "", fmt.Errorf("mount point %s is already a unionmount mount", p)
	}
	return resolveDir(roleMountpoint, p)
}

// resolveWork resolves the workdir, which may not exist yet, and checks
// that it is, or will be created, on the upper's filesystem: copy-up
// renames from it into the upper.
func resolveWork(path, upper string) (string, error) {
	p, err := resolveParent(path)
	if err != nil {
		return "", describe(roleWork, path, err)
	}
	onDisk := filepath.Dir(p) // where Mount would create it
	if _, err := os.Lstat(p); err == nil {
		if p, err = resolveDir(roleWork, p); err != nil {
			return "", err
		}
		onDisk = p
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", describe(roleWork, path, err)
	}
	var ws, us unix.Stat_t
	if err := unix.Stat(onDisk, &ws); err != nil {
		return "", describe(roleWork, onDisk, err)
	}
	if err := unix.Stat(upper, &us); err != nil {
		return "", describe(roleUpper, upper, err)
	}
	if ws.Dev != us.Dev {
		return "", fmt.Errorf("workdir %s is not on the same filesystem as upper %s", p, upper)
	}
	return p, nil
}

// resolve returns the absolute form of path with every symlink followed.
func resolve(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// resolveParent resolves the directory that holds path and joins the last
// element to it unresolved, for paths that may not exist or not be
// stat'able.
func resolveParent(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if abs == "/" {
		return abs, nil
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(abs)), nil
}

// describe turns a failed lookup of path into a one-line error.
func describe(r role, path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s %s does not exist", r, path)
	case errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%s %s is not a directory", r, path)
	case errors.Is(err, syscall.ENOTCONN):
		return fmt.Errorf("%s %s is a dead FUSE mount (unmount it first)", r, path)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s %s: %w", r, path, err)
}
