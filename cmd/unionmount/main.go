// Command unionmount mounts a union of directories with overlayfs
// semantics through FUSE. Run "unionmount --help" for the syntax.
package main

import (
	"fmt"
	"os"
)

func main() {
	app := New()
	if err := app.Run(flagsFirst(app, os.Args)); err != nil {
		fmt.Fprintf(os.Stderr, "unionmount: %s\n", err)
		os.Exit(1)
	}
}
