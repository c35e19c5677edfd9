package mount

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/unionmount/unionmount/cow"
	"github.com/unionmount/unionmount/fs"
)

// Union is a live mount: the opened stack and the server that serves it.
type Union struct {
	opts   Options
	stack  *cow.Stack
	server *fs.Server
	// stopControl closes the control socket (control.go).
	stopControl func()
	// containerLock is the lock on an image mount's container directory.
	containerLock *os.File
	// sigs receives SIGINT and SIGTERM from the moment the mount is up,
	// for Serve.
	sigs chan os.Signal
}

// Mount creates the workdir if needed, opens the stack and mounts it on
// o.Mountpoint. It returns once the kernel serves the mount point.
//
// Preconditions: o.Validate succeeded.
func Mount(o *Options) (*Union, error) {
	createdWork := false
	if o.Work != "" {
		err := os.Mkdir(o.Work, 0o700)
		if err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create workdir: %w", err)
		}
		createdWork = err == nil
	}
	// Whoever sees the mount may signal the process at once: a signal
	// that comes before Serve waits for it.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	u, err := mountStack(o)
	if err != nil {
		signal.Stop(sigs)
		if createdWork {
			// A failed mount leaves nothing behind. The directory
			// is new, so only the stack's own files can be in it.
			_ = os.RemoveAll(o.Work)
		}
		return nil, err
	}
	u.sigs = sigs
	return u, nil
}

func mountStack(o *Options) (*Union, error) {
	st, err := cow.Open(cow.Config{
		Lowers:    o.Lowers,
		Upper:     o.Upper,
		Work:      o.Work,
		UserXattr: o.UserXattr,
		Volatile:  o.Volatile,
		Metacopy:  !o.NoMetacopy,
		// With timeout=0 the layers may change behind the union's
		// back; otherwise only the union changes them.
		Exclusive: o.Cache.Timeout > 0,
	})
	if err != nil {
		return nil, fmt.Errorf("open layers: %w", err)
	}
	server, err := fs.Mount(o.Mountpoint, st, o.fuseOptions(), o.Cache)
	if err != nil {
		_ = st.Close() // the mount error is the one to report
		return nil, fmt.Errorf("mount %s: %w", o.Mountpoint, err)
	}
	u := &Union{opts: *o, stack: st, server: server}
	if o.containerDir != "" {
		// Held until the daemon exits: the container is in use.
		if f, _, err := lockContainer(o.containerDir); err == nil && f != nil {
			u.containerLock = f
		}
	}
	if u.stopControl, err = u.serveControl(); err != nil {
		_ = server.Unmount()
		server.Wait()
		_ = st.Close()
		return nil, err
	}
	return u, nil
}

// fuseOptions are the lifecycle options of the mount; package fs adds the
// caching policy.
func (o *Options) fuseOptions() fuse.MountOptions {
	mo := fuse.MountOptions{
		FsName:     o.FsName,
		Name:       Name,
		AllowOther: o.AllowOther,
		Debug:      o.Debug,
	}
	if mo.FsName == "" {
		mo.FsName = Name
	}
	if o.DefaultPermissions {
		mo.Options = append(mo.Options, "default_permissions")
	}
	// Without an upper the union is read-only, and the kernel says so
	// (EROFS, statfs, /proc/mounts), as for an overlay without upperdir.
	readOnly := o.ReadOnly || o.Upper == ""
	if os.Geteuid() == 0 {
		// Root needs no fusermount3; fs falls back to it if mount(2)
		// is refused. Flags must then be bits, not options.
		mo.DirectMount = true
		if readOnly {
			mo.DirectMountFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_RDONLY
		}
	} else if readOnly {
		mo.Options = append(mo.Options, "ro")
	}
	return mo
}

// Wait blocks until the mount point is unmounted, by anyone, then closes
// the stack.
func (u *Union) Wait() error {
	u.server.Wait()
	u.stopControl()
	if u.opts.container != "" {
		_ = os.RemoveAll(u.opts.container)
	}
	if u.containerLock != nil {
		u.containerLock.Close()
	}
	if err := u.stack.Close(); err != nil {
		return fmt.Errorf("close layers: %w", err)
	}
	return nil
}

// Serve is Wait that also unmounts on SIGINT or SIGTERM. A busy mount is
// detached lazily and stays served until its last user lets go; a second
// signal then stops serving at once.
func (u *Union) Serve() error {
	sigs := u.sigs
	defer signal.Stop(sigs)

	done := make(chan error, 1)
	go func() { done <- u.Wait() }()
	select {
	case err := <-done:
		return err
	case <-sigs:
	}
	if err := u.server.Unmount(); err != nil {
		if err := fs.Unmount(u.opts.Mountpoint, true); err != nil {
			return err
		}
	}
	select {
	case err := <-done:
		return err
	case sig := <-sigs:
		return fmt.Errorf("%s still busy, stopped by %v", u.opts.Mountpoint, sig)
	}
}

// Unmount unmounts the unionmount mount on dir (fs.Unmount).
func Unmount(dir string, lazy bool) error {
	p, err := findMount(dir)
	if err != nil {
		return err
	}
	return fs.Unmount(p, lazy)
}
