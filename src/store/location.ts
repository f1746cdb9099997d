/** `db` names PostgreSQL when it is a postgres:// or postgresql:// URL; anything else is a SQLite file path. */
export const isPostgresUrl = (db: string): boolean => /^postgres(ql)?:\/\//i.test(db);

/** A database URL with its password masked, for messages and logs. */
export const redactUrl = (url: string): string => url.replace(/^(postgres(?:ql)?:\/\/[^:/@]*):[^@]*@/i, '$1:***@');
