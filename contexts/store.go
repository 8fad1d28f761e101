// Package contexts keeps the machines gondolin's CLI talks to: the
// built-in default (this machine's supervisor) and named contexts on
// other hosts, reached over the user's own ssh, where `gondolin
// supervisor dial-stdio` carries the same HTTP API to that host's
// supervisor. Nothing new listens anywhere: ssh authenticates, and the
// far side runs with that user's rights only.
package contexts

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/gondolin/gondolin/internal/atomicfile"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
)

// Default is the built-in context: this machine.
const Default = "default"

// Environment variables the contexts read.
const (
	// EnvContext selects a context, over the stored choice.
	EnvContext = "GONDOLIN_CONTEXT"
	// EnvSSHCommand replaces "ssh" (as GIT_SSH_COMMAND does for git):
	// run by sh, with the arguments appended.
	EnvSSHCommand = "GONDOLIN_SSH_COMMAND"
)

// Context is a machine whose supervisor the CLI can use.
type Context struct {
	Name string `json:"name"`
	// Host is ssh://[USER@]HOST[:PORT]; empty for the default context.
	Host string `json:"host,omitempty"`
	// Gondolin is the command run on the far side (default gondolin,
	// found on the remote PATH).
	Gondolin string `json:"gondolin,omitempty"`
}

// Remote reports whether c is on another machine.
func (c Context) Remote() bool { return c.Host != "" }

// file is contexts.json.
type file struct {
	Current  string    `json:"current,omitempty"`
	Contexts []Context `json:"contexts"`
}

// Store is the contexts of one GONDOLIN_HOME.
type Store struct {
	path string
}

// Open returns home's contexts (none stored yet is fine).
func Open(home layout.Home) *Store {
	return &Store{path: filepath.Join(string(home), "contexts.json")}
}

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// CheckName refuses a name that is no context name.
func CheckName(name string) error {
	if !validName.MatchString(name) {
		return errdefs.Errorf(errdefs.ErrInvalid, "context name %q: use letters, digits, '.', '_' and '-', starting with a letter or digit", name)
	}
	return nil
}

func (s *Store) read() (file, error) {
	var f file
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("%s is damaged (%v): fix or remove it", s.path, err)
	}
	return f, nil
}

// update reads the file, lets change edit it, and writes it back, under
// a lock on the home: two commands changing contexts at once both land.
func (s *Store) update(change func(*file) error) error {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return err
	}
	unlock, err := lockFile(context.Background(), s.path+".lock")
	if err != nil {
		return err
	}
	defer unlock()
	f, err := s.read()
	if err != nil {
		return err
	}
	if err := change(&f); err != nil {
		return err
	}
	return atomicfile.WriteJSON(s.path, f, 0o600)
}

// List returns every context, the default first, and the current one's
// name (the stored choice; GONDOLIN_CONTEXT and --context are the
// caller's to apply).
func (s *Store) List() (list []Context, current string, err error) {
	f, err := s.read()
	if err != nil {
		return nil, "", err
	}
	list = append([]Context{{Name: Default}}, f.Contexts...)
	current = f.Current
	if current == "" {
		current = Default
	}
	return list, current, nil
}

// Get returns the context called name.
func (s *Store) Get(name string) (Context, error) {
	list, _, err := s.List()
	if err != nil {
		return Context{}, err
	}
	return find(list, name)
}

func find(list []Context, name string) (Context, error) {
	for _, c := range list {
		if c.Name == name {
			return c, nil
		}
	}
	return Context{}, errdefs.Errorf(errdefs.ErrNotFound, "no context %q (see: gondolin context ls)", name)
}

// Create stores a new context, checked.
func (s *Store) Create(c Context) error {
	if err := CheckName(c.Name); err != nil {
		return err
	}
	if _, err := ParseHost(c.Host); err != nil {
		return err
	}
	if c.Gondolin != "" {
		if err := checkCommand(c.Gondolin); err != nil {
			return err
		}
	}
	return s.update(func(f *file) error {
		if c.Name == Default || slices.ContainsFunc(f.Contexts, func(o Context) bool { return o.Name == c.Name }) {
			return errdefs.Errorf(errdefs.ErrConflict, "a context %q exists already (remove it first: gondolin context rm %s)", c.Name, c.Name)
		}
		f.Contexts = append(f.Contexts, c)
		return nil
	})
}

// Remove forgets a context; the current one falls back to the default.
func (s *Store) Remove(name string) error {
	if name == Default {
		return errdefs.Errorf(errdefs.ErrInvalid, "the default context is this machine: it cannot be removed")
	}
	return s.update(func(f *file) error {
		i := slices.IndexFunc(f.Contexts, func(o Context) bool { return o.Name == name })
		if i < 0 {
			return errdefs.Errorf(errdefs.ErrNotFound, "no context %q (see: gondolin context ls)", name)
		}
		f.Contexts = slices.Delete(f.Contexts, i, i+1)
		if f.Current == name {
			f.Current = ""
		}
		return nil
	})
}

// Use makes name the current context.
func (s *Store) Use(name string) error {
	return s.update(func(f *file) error {
		if name != Default && !slices.ContainsFunc(f.Contexts, func(o Context) bool { return o.Name == name }) {
			return errdefs.Errorf(errdefs.ErrNotFound, "no context %q (see: gondolin context ls)", name)
		}
		f.Current = name
		if name == Default {
			f.Current = ""
		}
		return nil
	})
}

// Selected is the context a command uses: flag (--context) when given,
// else GONDOLIN_CONTEXT, else the stored choice, else the default.
func (s *Store) Selected(flag string, getenv func(string) string) (Context, error) {
	list, current, err := s.List() // one read of the file
	if err != nil {
		return Context{}, err
	}
	return find(list, cmp.Or(flag, getenv(EnvContext), current))
}
