package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

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
	have := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		have[root.Content[i].Value] = true
	}
	for _, s := range settings {
		if have[s.Key] {
			continue
		}
		root.Content = append(root.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s.Key},
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
