package cow

// Config names the directories of a stack.
type Config struct {
	// Lowers are the read-only layers, top-most first.
	Lowers []string
	// Upper is the writable layer; empty for a read-only union.
	Upper string
	// Work is the work directory on the upper's filesystem; required
	// with Upper.
	Work string
	// UserXattr selects the user.* xattr namespace for the union's own
	// xattrs (the kernel's userxattr mode), as needed without root.
	UserXattr bool
}

// Stack is an opened set of layers.
type Stack struct {
	cfg Config
}

// Open opens the layers named by cfg.
func Open(cfg Config) (*Stack, error) { return &Stack{cfg: cfg}, nil }

// Close releases the stack's file descriptors.
func (s *Stack) Close() error { return nil }
