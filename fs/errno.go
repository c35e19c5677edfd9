package fs

import (
	"errors"
	"log"
	"syscall"
)

// errno converts an engine error to the errno the kernel gets. It is the
// only place errors cross the FUSE boundary: an error that carries no errno
// is logged and becomes EIO.
func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	log.Printf("unionmount: %v", err)
	return syscall.EIO
}
