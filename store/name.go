package store

import (
	"fmt"
	"regexp"
	"strings"
)

// Image names follow the docker reference grammar (distribution/reference):
// an optional registry host[:port], path components of lowercase letters
// and digits joined by ".", "_", "__" or dashes, and a tag. A name without
// a tag gets ":latest", and docker.io's default prefixes are dropped, as
// docker shows them: "docker.io/library/alpine" is "alpine:latest".
var (
	nameComponent = `[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*`
	hostPart      = `(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?`
	nameRE        = regexp.MustCompile(`^` + hostPart + nameComponent + `(?:/` + nameComponent + `)*$`)
	tagRE         = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// NormalizeName returns the store's spelling of an image name: with a tag
// (":latest" by default), without docker.io's default prefixes.
func NormalizeName(name string) (string, error) {
	repo, tag := name, "latest"
	if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.Contains(name[i+1:], "/") {
		repo, tag = name[:i], name[i+1:]
	}
	if strings.Contains(repo, "@") {
		return "", fmt.Errorf("image name %q: digest references are not tags; name images by NAME[:TAG]", name)
	}
	if len(repo) > 255 || !nameRE.MatchString(repo) {
		return "", fmt.Errorf("invalid image name %q: want lowercase [HOST[:PORT]/]NAME[/NAME...][:TAG]", name)
	}
	if !tagRE.MatchString(tag) {
		return "", fmt.Errorf("invalid tag %q in image name %q", tag, name)
	}
	for _, p := range []string{"docker.io/", "index.docker.io/"} {
		if strings.HasPrefix(repo, p) {
			repo = strings.TrimPrefix(repo[len(p):], "library/")
			break
		}
	}
	return repo + ":" + tag, nil
}

// fullName returns the fully qualified form of a normalized name, as
// containerd spells it in io.containerd.image.name: docker.io/library/
// added back.
func fullName(name string) string {
	first, _, hasSlash := strings.Cut(name, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return name
	}
	if !hasSlash {
		return "docker.io/library/" + name
	}
	return "docker.io/" + name
}
