package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"meshd.dev/meshd/internal/atomicfile"
)

// Setting is one top-level key and value that AddMissing may write.
type Setting struct {
	Key   string
	Value string
}

// AddMissing adds each setting whose key the file at path does not set yet,
// keeping every setting, comment and the order of what is there: an
// operator's edits always win. It writes atomically (mode 0640, creating the
// file and its directory if needed) and only when something was added;
// added lists the keys it wrote.
func AddMissing(path string, settings []Setting) (added []string, err error) {
	var doc yaml.Node
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b = nil
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("config: %s is not valid YAML: %s", path, oneLine(err))
		}
	}
	if doc.Kind == 0 {
		doc = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config: %s is not a mapping of keys to values", path)
	}
	for _, s := range settings {
		// A dotted key ("trust.authorities") is a key of a nested mapping.
		m, name := root, s.Key
		if section, rest, ok := strings.Cut(s.Key, "."); ok {
			if m = mappingIn(root, section); m == nil {
				return nil, fmt.Errorf("config: %s: %s is not a mapping of keys to values", path, section)
			}
			name = rest
		}
		if valueIn(m, name) != nil {
			continue
		}
		m.Content = append(m.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: name},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s.Value})
		added = append(added, s.Key)
	}
	if len(added) == 0 {
		return nil, nil
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create config directory: %w", err)
	}
	if err := atomicfile.WriteFile(path, out.Bytes(), 0o640); err != nil {
		return nil, err
	}
	return added, nil
}

// valueIn is the value of key in mapping m, or nil.
func valueIn(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// mappingIn is the mapping under key in root, added when missing; nil when
// key holds something else.
func mappingIn(root *yaml.Node, key string) *yaml.Node {
	if v := valueIn(root, key); v != nil {
		if v.Kind != yaml.MappingNode {
			return nil
		}
		return v
	}
	v := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
	return v
}
