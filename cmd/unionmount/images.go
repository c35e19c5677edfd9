package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/unionmount/unionmount/layer"
	"github.com/unionmount/unionmount/store"
)

// The image store commands: load, import, images, history, rmi, save and
// export, docker's verbs over a store that is an OCI image layout.

const storeHelp = `The store is an OCI image layout (--store, $UNIONMOUNT_STORE; default
/var/lib/unionmount as root, else ~/.local/share/unionmount), so skopeo and
umoci use it directly. skopeo splits "oci:DIR:REF" at the first colon after
DIR, so the image name keeps its tag:
   skopeo copy docker://docker.io/library/alpine:3.20 oci:STORE:alpine:3.20
   skopeo copy oci:STORE:alpine:3.20 docker://registry.example/alpine:3.20
   umoci unpack --image STORE:alpine:3.20 bundle
A name copied in without a tag ("oci:STORE:alpine") is alpine:latest here.`

// openStore opens the store named by --store.
func openStore(c *cli.Context) (*store.Store, error) {
	s, err := store.Open(storeDir(c))
	if err != nil {
		return nil, err
	}
	s.Progress = storeProgress()
	s.Warn = func(msg string) {
		endProgress()
		fmt.Fprintf(os.Stderr, "unionmount: warning: %s\n", msg)
	}
	return s, nil
}

// storeProgress returns a progress callback for the store's long work, or
// nil when stderr is not a terminal.
func storeProgress() func(store.Progress) {
	if !isTerminal(os.Stderr) {
		return nil
	}
	return func(p store.Progress) {
		showProgress(func() string {
			item := p.Item
			if i := strings.IndexByte(item, ':'); i >= 0 && strings.HasPrefix(item, "sha256:") {
				item = shortID(item[i+1:])
			}
			done := humanSize(p.Done)
			if p.Total > 0 {
				done += " / " + humanSize(p.Total)
			}
			return fmt.Sprintf("%s %s: %s", p.Op, item, done)
		})
	}
}

var loadCommand = &cli.Command{
	Name:      "load",
	Usage:     "load images from a docker-save or OCI archive, or an OCI layout",
	ArgsUsage: " ",
	Description: `Loads the images of an archive into the store, under the names the archive
gives them: a docker-save tar (docker save, skopeo docker-archive:), an OCI
archive (skopeo oci-archive:), both in one (docker >= 25, unionmount save),
or with --layout an OCI layout directory (umoci, skopeo oci:). Every blob,
size and diff_id is verified and every layer unpacked before anything is
stored: a bad or hostile archive leaves the store as it was.

` + storeHelp + `

Examples:
   unionmount load -i alpine.tar
   docker save alpine:3.20 | unionmount load
   unionmount load --layout ./oci-dir`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "input", Aliases: []string{"i"}, Value: "-", Usage: "read the archive from `FILE` (- for stdin)"},
		&cli.StringFlag{Name: "layout", Usage: "load the OCI image layout directory `DIR` instead"},
		storeFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usageError(c, "load takes no arguments; the archive is -i FILE or stdin")
		}
		s, err := openStore(c)
		if err != nil {
			return err
		}
		var imgs []*store.Image
		if dir := c.String("layout"); dir != "" {
			imgs, err = s.LoadLayout(dir)
		} else {
			var in io.ReadCloser
			in, err = openInput(c.String("input"))
			if err != nil {
				return err
			}
			defer in.Close()
			imgs, err = s.Load(in, nil)
		}
		endProgress()
		if err != nil {
			return err
		}
		for _, img := range imgs {
			fmt.Printf("Loaded image: %s\n", img.Name)
		}
		return nil
	},
}

// openInput opens a file to read, "-" being stdin, which must not be a
// terminal.
func openInput(name string) (io.ReadCloser, error) {
	if name == "-" || name == "" {
		if isTerminal(os.Stdin) {
			return nil, errors.New("no input: name a file (-i FILE) or pipe the archive in")
		}
		return io.NopCloser(os.Stdin), nil
	}
	return os.Open(name)
}

var importCommand = &cli.Command{
	Name:      "import",
	Usage:     "make a one-layer image from a plain rootfs tarball (docker import)",
	ArgsUsage: "FILE|- NAME[:TAG]",
	Description: `Makes the image NAME from a rootfs tarball (plain, gzip or bzip2), as docker
import does. The tree is unpacked and written again in the canonical layer
form, so the same tree imports as the same layer whatever made the tarball.
A tarball with whiteout entries (.wh.*) is a layer, not a rootfs: refused.
Prints the image ID.

` + storeHelp + `

Examples:
   unionmount import rootfs.tar.gz mybase:1.0 -m "from debootstrap"
   tar -C /srv/rootfs -c . | unionmount import - mybase`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "message", Aliases: []string{"m"}, Usage: "history comment"},
		&cli.StringFlag{Name: "author", Aliases: []string{"a"}, Usage: "author"},
		storeFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 2 {
			return usageError(c, "expected two arguments, FILE|- and NAME")
		}
		s, err := openStore(c)
		if err != nil {
			return err
		}
		in, err := openInput(c.Args().Get(0))
		if err != nil {
			return err
		}
		defer in.Close()
		img, err := s.Import(in, c.Args().Get(1), store.ImportOptions{Message: c.String("message"), Author: c.String("author")})
		endProgress()
		if err != nil {
			return err
		}
		fmt.Println(img.ConfigDigest)
		return nil
	},
}

var imagesCommand = &cli.Command{
	Name:      "images",
	Usage:     "list the images of the store",
	ArgsUsage: " ",
	Description: `Lists the store's images: name, image ID (the config digest), when it was
created, and its content size (the blobs as stored, compressed).

` + storeHelp,
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, DisableDefaultText: true, Usage: "only the image IDs"},
		storeFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usageError(c, "images takes no arguments")
		}
		s, err := openStore(c)
		if err != nil {
			return err
		}
		imgs, err := s.Images()
		if err != nil {
			return err
		}
		if c.Bool("quiet") {
			for _, img := range imgs {
				fmt.Println(img.ID())
			}
			return nil
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
		fmt.Fprintln(w, "NAME\tIMAGE ID\tCREATED\tSIZE")
		for _, img := range imgs {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", img.Name, img.ID(), ago(img.Config.Created), humanSize(img.Size()))
		}
		return w.Flush()
	},
}

var historyCommand = &cli.Command{
	Name:      "history",
	Usage:     "show the history of an image",
	ArgsUsage: "NAME|ID",
	Description: `Shows how the image was made, newest first: per history entry the layer it
made (its blob digest), when, by what, the layer's size as stored, and the
comment.

` + storeHelp,
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "no-trunc", DisableDefaultText: true, Usage: "do not shorten the output"},
		storeFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usageError(c, "expected one argument, NAME")
		}
		s, err := openStore(c)
		if err != nil {
			return err
		}
		img, err := s.Image(c.Args().First())
		if err != nil {
			return err
		}
		trunc := func(s string, n int) string {
			s = strings.ReplaceAll(s, "\n", " ")
			if c.Bool("no-trunc") || len(s) <= n {
				return s
			}
			return s[:n-3] + "..."
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
		fmt.Fprintln(w, "LAYER\tCREATED\tCREATED BY\tSIZE\tCOMMENT")
		for _, h := range s.History(img) {
			id := "<empty>"
			if h.Layer != "" {
				id = h.Layer.Encoded()
				if !c.Bool("no-trunc") {
					id = shortID(id)
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", id, ago(h.Created), trunc(h.CreatedBy, 45), humanSize(h.Size), trunc(h.Comment, 45))
		}
		return w.Flush()
	},
}

var rmiCommand = &cli.Command{
	Name:      "rmi",
	Usage:     "remove images from the store",
	ArgsUsage: "NAME|ID...",
	Description: `Untags each image, then deletes its blobs and unpacked layers that no other
image, and no image mount, still uses. An image ID with several names is
refused: remove it by name.

` + storeHelp,
	Flags: []cli.Flag{storeFlag},
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usageError(c, "expected at least one image NAME")
		}
		s, err := openStore(c)
		if err != nil {
			return err
		}
		var errs []string
		for _, name := range c.Args().Slice() {
			if err := s.Remove(name); err != nil {
				errs = append(errs, err.Error())
				continue
			}
			fmt.Printf("Untagged: %s\n", name)
		}
		if errs != nil {
			return errors.New(strings.Join(errs, "; "))
		}
		return nil
	},
}

var saveCommand = &cli.Command{
	Name:      "save",
	Usage:     "write images to one docker-save and OCI archive",
	ArgsUsage: "NAME...",
	Description: `Writes the images to one tar that is both a docker-save archive and an OCI
image layout, as docker >= 25 writes: docker load, podman load, skopeo
(docker-archive:FILE, oci-archive:FILE:NAME) and unionmount load read it.
The same images always give the same bytes (mtimes are SOURCE_DATE_EPOCH,
or 0). Without -o the archive goes to stdout, which must not be a terminal.

` + storeHelp + `

Examples:
   unionmount save myimg:1 -o myimg.tar
   unionmount save myimg:1 | ssh host unionmount load`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to `FILE` instead of stdout"},
		storeFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usageError(c, "expected at least one image NAME")
		}
		s, err := openStore(c)
		if err != nil {
			return err
		}
		return writeOutput(c.String("output"), func(w io.Writer) error {
			return s.Save(c.Args().Slice(), w)
		})
	},
}

var exportCommand = &cli.Command{
	Name:      "export",
	Usage:     "write the flattened tree of an image or a directory as a rootfs tar",
	ArgsUsage: "IMAGE|DIR",
	Description: `Writes the whole tree of an image of the store, its layers applied, as one
plain rootfs tar without whiteouts (docker export). Given a directory (a
mount point is one), writes that tree. Without -o the tar goes to stdout,
which must not be a terminal.

` + storeHelp + `

Examples:
   unionmount export myimg:1 -o rootfs.tar
   unionmount export /mnt/merged | gzip > rootfs.tar.gz`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to `FILE` instead of stdout"},
		storeFlag,
	},
	Action: func(c *cli.Context) error {
		if c.NArg() != 1 {
			return usageError(c, "expected one argument, an IMAGE or a DIR")
		}
		return writeOutput(c.String("output"), func(w io.Writer) error {
			return exportTree(c, c.Args().First(), w)
		})
	},
}

// exportTree writes the flattened tree that arg names to w: a directory's
// (a live mount point is a directory), else an image of the store.
func exportTree(c *cli.Context, arg string, w io.Writer) error {
	if fi, err := os.Stat(arg); err == nil && fi.IsDir() {
		opt := layer.Options{Warn: func(msg string) { fmt.Fprintf(os.Stderr, "unionmount: warning: %s\n", msg) }, Progress: progress("export")}
		epoch, err := store.SourceDateEpoch()
		if err != nil {
			return err
		}
		opt.Epoch = epoch
		if _, err := layer.Export(w, []string{arg}, opt); err != nil {
			return fmt.Errorf("export %s: %w", arg, err)
		}
		return nil
	}
	s, err := openStore(c)
	if err != nil {
		return err
	}
	img, err := s.Image(arg)
	if err != nil {
		return err
	}
	return s.Export(img, w)
}

// writeOutput runs write into the file name, or stdout for "" or "-". A
// file is written beside its name and renamed when complete, so a failed
// write leaves no half archive; stdout must not be a terminal.
func writeOutput(name string, write func(w io.Writer) error) error {
	if name == "" || name == "-" {
		if isTerminal(os.Stdout) {
			return errors.New("refusing to write an archive to a terminal: use -o FILE or redirect stdout")
		}
		err := write(os.Stdout)
		endProgress()
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	err = write(f)
	endProgress()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}

// ago formats a time as docker does: "3 days ago".
func ago(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "N/A"
	}
	d := time.Since(*t)
	if d < 0 {
		return "in the future"
	}
	plural := func(n int, unit string) string {
		if n == 1 {
			return "1 " + unit + " ago"
		}
		return fmt.Sprintf("%d %ss ago", n, unit)
	}
	switch s := d.Seconds(); {
	case s < 1:
		return "Less than a second ago"
	case s < 60:
		return plural(int(s), "second")
	case d.Minutes() < 2:
		return "About a minute ago"
	case d.Minutes() < 60:
		return plural(int(d.Minutes()), "minute")
	case d.Hours() < 2:
		return "About an hour ago"
	case d.Hours() < 48:
		return plural(int(d.Hours()), "hour")
	case d.Hours() < 24*14:
		return plural(int(d.Hours()/24), "day")
	case d.Hours() < 24*60:
		return plural(int(d.Hours()/24/7), "week")
	case d.Hours() < 24*365*2:
		return plural(int(d.Hours()/24/30), "month")
	}
	return plural(int(d.Hours()/24/365), "year")
}
