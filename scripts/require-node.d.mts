/** Types of scripts/require-node.mjs (plain JavaScript so that it runs on the old Node it refuses). */
export declare function satisfies(version: string, range: string): boolean;
export declare function nodeVersionProblem(version: string, range: string, executable: string): string | null;
export declare function requiredNodeRange(): string;
