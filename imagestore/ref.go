package imagestore

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/gondolin/gondolin/internal/errdefs"
)

// DefaultTag is the tag a bare image name means.
const DefaultTag = "latest"

// The grammar keeps a ref usable as two path elements under refs/: no
// separators, no "." or ".." (neither may start with a dot), bounded length.
var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	tagRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
)

// idPrefix starts every image ID and blob digest.
const idPrefix = "sha256:"

// Ref names an image: name:tag, such as default:latest.
type Ref struct {
	Name string
	Tag  string
}

// ParseRef parses "name:tag" or "name" (meaning name:latest).
func ParseRef(s string) (Ref, error) {
	name, tag, hasTag := strings.Cut(s, ":")
	if !hasTag {
		tag = DefaultTag
	}
	switch {
	case s == "":
		return Ref{}, fmt.Errorf("%w: empty image reference", errdefs.ErrInvalid)
	case !nameRE.MatchString(name):
		return Ref{}, fmt.Errorf("%w: image reference %q: name must be 1-64 of a-z 0-9 . _ - starting with a letter or digit", errdefs.ErrInvalid, s)
	case name+":" == idPrefix:
		// "sha256:..." is how image IDs are spelled; a ref with that
		// name could never be resolved.
		return Ref{}, fmt.Errorf("%w: image reference %q: the name sha256 is reserved for image IDs", errdefs.ErrInvalid, s)
	case !tagRE.MatchString(tag):
		return Ref{}, fmt.Errorf("%w: image reference %q: tag must be 1-128 of A-Z a-z 0-9 . _ - not starting with . or -", errdefs.ErrInvalid, s)
	}
	return Ref{Name: name, Tag: tag}, nil
}

// String returns "name:tag".
func (r Ref) String() string { return r.Name + ":" + r.Tag }
