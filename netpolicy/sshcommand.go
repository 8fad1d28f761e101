package netpolicy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// gitSSHCommands are the programs git runs on an SSH remote: fetch and
// clone, push, and archive --remote. By default they are the only
// commands the SSH proxy passes (see parseGitCommand).
var gitSSHCommands = []string{"git-upload-pack", "git-receive-pack", "git-upload-archive"}

// maxGitPath bounds a repository path: a path, not a payload.
const maxGitPath = 1024

// gitCommand is a git exec request as parseGitCommand understood it.
type gitCommand struct {
	Program string // one of gitSSHCommands
	Path    string // the repository, unquoted
}

// String is the command as it goes upstream: the program, one space,
// and the path in single quotes, as git itself sends it (sq_quote);
// never the guest's own spelling, so the upstream's shell or git-shell
// sees exactly what the proxy checked. parseGitCommand admits only paths
// of gitPathRune characters, so the quotes hold no ', \ or !, and no
// shell reads this differently: not sh, bash, dash or ksh, not zsh
// (even with RC_QUOTES: no two quotes in a row), not csh or tcsh (no !
// for history substitution), not fish (no \' or \\, which it unescapes
// inside single quotes), not rc, and not git-shell, whose sq_dequote
// takes exactly this form.
func (c gitCommand) String() string {
	return c.Program + " '" + c.Path + "'"
}

// parseGitCommand accepts an SSH exec command only in the forms git
// clients send: one of gitSSHCommands, one space, and one argument, the
// repository path, as a single shell word made of single-quoted runs,
// the \' and \! escapes git puts between them, and unquoted runs of
// characters no shell treats specially (JGit's ~user/'path'). Anything a
// shell would read as more than that word (a second argument, ; | & $ `
// redirections, globs, double quotes, newlines) is refused, and so is a
// path that could be an option (a leading -), holds control characters,
// or holds any character but gitPathRune's.
//
// Why so strict: on a plain sshd the upstream runs the command with the
// login shell of the host's user, so anything looser is a shell there,
// and from there a pivot into the upstream's network. That shell may be
// any of them, and they disagree even inside single quotes (fish
// unescapes \' and \\ there, csh expands !, zsh with RC_QUOTES and rc
// read two quotes in a row as one), so the path may hold none of ' \ !,
// nor anything else a shell, or a forced-command wrapper splitting the
// command itself, might give a meaning: what String sends is then one
// plain quoted word to every shell. The \' and \! escapes are still
// read, so that a path with ' or ! is refused as such.
func parseGitCommand(cmd string) (gitCommand, error) {
	prog, arg, ok := strings.Cut(cmd, " ")
	if !slices.Contains(gitSSHCommands, prog) {
		return gitCommand{}, errors.New("not one of git's commands")
	}
	if !ok || arg == "" {
		return gitCommand{}, errors.New("no repository path")
	}
	path, err := shellWord(arg)
	if err != nil {
		return gitCommand{}, err
	}
	switch {
	case path == "":
		return gitCommand{}, errors.New("empty repository path")
	case len(path) > maxGitPath:
		return gitCommand{}, fmt.Errorf("repository path longer than %d bytes", maxGitPath)
	case !utf8.ValidString(path):
		return gitCommand{}, errors.New("repository path is not UTF-8")
	case path[0] == '-':
		return gitCommand{}, errors.New("repository path starts with - (an option)")
	case strings.ContainsFunc(path, unicode.IsControl):
		return gitCommand{}, errors.New("control character in the repository path")
	}
	if i := strings.IndexFunc(path, func(r rune) bool { return !gitPathRune(r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(path[i:])
		return gitCommand{}, fmt.Errorf("%q in the repository path (only letters, digits, spaces and %s)", r, gitPathPunct)
	}
	return gitCommand{Program: prog, Path: path}, nil
}

// shellWord returns the value of s read as one POSIX shell word built
// only of single-quoted runs, \' and \! escapes, and unquoted runs of
// shellPlain characters; any other byte outside quotes is an error.
func shellWord(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return "", errors.New("unterminated quote")
			}
			b.WriteString(s[i+1 : i+1+end])
			i += end + 2
		case c == '\\':
			if i+1 == len(s) || (s[i+1] != '\'' && s[i+1] != '!') {
				return "", errors.New(`backslash other than \' or \! outside quotes`)
			}
			b.WriteByte(s[i+1])
			i += 2
		case c == ' ' || c == '\t':
			return "", errors.New("more than one argument")
		case shellPlain(c):
			b.WriteByte(c)
			i++
		default:
			return "", fmt.Errorf("%q outside quotes", c)
		}
	}
	return b.String(), nil
}

// shellPlain reports whether c means only itself to a POSIX shell
// outside quotes, anywhere in a word after the first (~ expands only at
// the start of one, to a home directory, which is a path still).
func shellPlain(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("/._-~+@:,%=", c) >= 0
}

// gitPathPunct is the ASCII punctuation a repository path may hold: the
// characters of paths, URLs' user@host:port and the like, none of which
// means anything to any shell inside single quotes.
const gitPathPunct = "/._-~+@:,%="

// gitPathRune reports whether r may be part of a repository path: an
// ASCII letter, digit, space or gitPathPunct, or a non-ASCII letter,
// mark or digit (dépôt/ünï). Not ' \ ! (see parseGitCommand), not $ `
// " ; | & < > ( ) { } [ ] * ? # ^, which some wrapper might still read
// as syntax, not other spaces (U+00A0, U+2028) or format characters
// (bidirectional overrides).
func gitPathRune(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == ' ':
		return true
	case r < utf8.RuneSelf:
		return strings.ContainsRune(gitPathPunct, r)
	}
	return unicode.In(r, unicode.L, unicode.M, unicode.N)
}

// validGitProtocol accepts what git puts in GIT_PROTOCOL
// ("version=2", colon-separated key=value pairs).
func validGitProtocol(v string) bool {
	if v == "" || len(v) > 256 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !shellPlain(c) || c == '~' || c == '/' {
			return false
		}
	}
	return true
}
