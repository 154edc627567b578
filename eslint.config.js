import eslint from "@eslint/js";
import tseslint from "typescript-eslint";
import globals from "globals";

/** `files` import nothing from the folders `forbidden` (src/<folder>), statically or with import(). */
function layer(files, forbidden) {
  const folders = forbidden.join("|");
  return {
    files,
    rules: {
      "no-restricted-imports": ["error", { patterns: forbidden.map((folder) => `**/${folder}/**`) }],
      "no-restricted-syntax": [
        "error",
        {
          selector: `ImportExpression[source.value=/(^|\\/)(${folders})\\//]`,
          message: `this layer does not import from src/{${forbidden.join(",")}}`,
        },
      ],
    },
  };
}

export default tseslint.config(
  { ignores: ["node_modules/", "dist/", ".cache/", "deploy/", "bench/results/"] },
  eslint.configs.recommended,
  ...tseslint.configs.recommended,
  { languageOptions: { globals: { ...globals.node } } },
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "no-console": "off",
    },
  },
  // Layering: the two commands never import each other; what both use (src/k8s, src/common,
  // src/api, src/policy, src/aws) imports neither of them nor the CLI; src/common is the floor.
  // Server-only Kubernetes code lives in src/server/k8s, the agent's pod watch in src/agent.
  layer(["src/agent/**"], ["server", "cli"]),
  layer(["src/server/**"], ["agent", "cli"]),
  layer(["src/k8s/**", "src/api/**", "src/policy/**", "src/aws/**"], ["agent", "server", "cli"]),
  layer(["src/common/**"], ["agent", "server", "cli", "k8s", "aws", "policy"]),
  // Only `keycutter server` starts the server: `explain`, `doctor` and the rest use its logic
  // modules, never its composition root.
  {
    files: ["src/cli/**"],
    ignores: ["src/cli/commands/server.ts"],
    rules: {
      "no-restricted-imports": ["error", { patterns: ["**/server/index.ts"] }],
      "no-restricted-syntax": [
        "error",
        {
          selector: "ImportExpression[source.value=/server\\/index\\.ts$/]",
          message: "the server's composition root",
        },
      ],
    },
  },
);
