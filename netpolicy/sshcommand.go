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

// String is the command as git itself sends it (git's sq_quote: the path
// in single quotes, ' and ! closed out and backslash-escaped), which is
// what goes upstream: never the guest's own spelling, so the upstream's
// shell or git-shell sees exactly what the proxy checked.
func (c gitCommand) String() string {
	var b strings.Builder
	b.WriteString(c.Program)
	b.WriteString(" '")
	for i := 0; i < len(c.Path); i++ {
		if ch := c.Path[i]; ch == '\'' || ch == '!' {
			b.WriteString("'\\")
			b.WriteByte(ch)
			b.WriteByte('\'')
		} else {
			b.WriteByte(ch)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// parseGitCommand accepts an SSH exec command only in the forms git
// clients send: one of gitSSHCommands, one space, and one argument, the
// repository path, as a single shell word made of single-quoted runs,
// the \' and \! escapes git puts between them, and unquoted runs of
// characters no shell treats specially (JGit's ~user/'path'). Anything a
// shell would read as more than that word (a second argument, ; | & $ `
// redirections, globs, double quotes, newlines) is refused, and so is a
// path that could be an option (a leading -) or holds control
// characters.
//
// Why so strict: on a plain sshd the upstream runs the command with the
// login shell of the host's user, so anything looser is a shell there,
// and from there a pivot into the upstream's network.
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
